"""Text generation: sampling, incremental detokenizing and the decode loop."""

from .detokenizer import IncrementalDetokenizer, StopMatcher
from .generate import Generation, generate, stream
from .sampling import SamplingParams

__all__ = ["Generation", "IncrementalDetokenizer", "SamplingParams", "StopMatcher", "generate", "stream"]
