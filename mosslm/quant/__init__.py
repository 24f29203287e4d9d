"""Weight-only quantization (int8, int4) for CPU inference, and exports to other runtimes."""

from .folder import (gguf_weight_bits, load_quantized, quantization_spec, quantize_like_gguf, quantize_model,
                     save_quantized, weight_bytes)
from .linear import QuantError, QuantLinear

__all__ = ["QuantError", "QuantLinear", "load_quantized", "quantization_spec", "quantize_model", "save_quantized",
           "weight_bytes", "quantize"]


def quantize(model_path: str, out: str, bits: int, group_size: int | None = None) -> dict:
    """`moss quantize`: load any model `moss chat` loads (fp32), quantize its linears, write the folder."""
    from pathlib import Path

    from .. import model as modellib

    source = Path(model_path).expanduser()
    if quantization_spec(source):
        raise QuantError(f"{source} is already quantized; quantize its full-precision source instead")
    loaded = modellib.load(source, dtype="fp32")
    spec = quantize_model(loaded.model, bits, group_size)
    save_quantized(loaded.model, loaded.tokenizer, source if source.is_dir() else None, Path(out), spec,
                   metadata={"quantized_from": str(source)})
    return spec
