"""vLLM as the engine: the same submit / stream / cancel interface as engine.Engine, on vLLM's AsyncLLM.

The agent and the server hold a handle that yields text deltas, has `.cancel()`, `.finished` and
`.result` (a Generation), exactly as with our engine; they cannot tell the two apart. vLLM runs its own
asyncio loop on a background thread here; each request is one `AsyncLLM.generate` with DELTA outputs,
cancel is `abort(request_id)`. Tensor and pipeline parallelism and the executor (Ray for several nodes)
pass straight through to vLLM's engine arguments.

vLLM is not a dependency: PyPI's wheel is a CUDA build that pins its own torch, so it goes in its own
environment (`pip install vllm mosslm`). Everything here is checked before vLLM is imported, so a wrong
setting is a clear error on any machine.
"""

from __future__ import annotations

import asyncio
import importlib.util
import itertools
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .engine import _DONE, EngineStopped, RequestHandle, RequestTooLarge
from .logprobs import TokenLogprob
from .sampling import SamplingParams


class VllmUnavailable(RuntimeError):
    """vLLM is not installed, or cannot run here (no GPU), or the settings are wrong."""


@dataclass
class VllmConfig:
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    max_model_len: int | None = None
    max_num_seqs: int = 256
    distributed_executor_backend: str | None = None  # None (vLLM decides), "mp" or "ray" (several nodes)
    dtype: str = "auto"

    def check(self, model_path: Path) -> None:
        """Every setting vLLM would reject, said before anything loads."""
        for name in ("tensor_parallel_size", "pipeline_parallel_size", "max_num_seqs"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise VllmUnavailable(f"--{name.replace('_', '-')} must be a positive integer (got {value!r})")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise VllmUnavailable(f"--gpu-memory-utilization must be in (0, 1] (got {self.gpu_memory_utilization})")
        if self.distributed_executor_backend not in (None, "mp", "ray"):
            raise VllmUnavailable(f"--distributed-executor-backend must be mp or ray "
                                  f"(got {self.distributed_executor_backend!r})")
        if self.dtype not in ("auto", "bfloat16", "float16", "float32"):
            raise VllmUnavailable(f"vLLM dtype must be auto, bfloat16, float16 or float32 (got {self.dtype!r})")
        if model_path.is_file() or not (model_path / "config.json").exists():
            raise VllmUnavailable(f"--backend vllm serves a Hugging Face folder; {model_path} is not one "
                                  "(GGUF files and `moss quantize` folders run on the default backend)")
        if (model_path / "quantized.safetensors").exists():
            raise VllmUnavailable(f"{model_path} is a `moss quantize` folder (CPU int8/int4); give vLLM the "
                                  "full-precision folder")
        if (model_path / "adapter_config.json").exists():
            raise VllmUnavailable(f"{model_path} is a LoRA adapter; merge it first (`moss export --merge-lora`)")


def require_vllm() -> None:
    if importlib.util.find_spec("vllm") is None:
        raise VllmUnavailable("--backend vllm needs vLLM, which is not installed here. It is a CUDA build that "
                              "pins its own torch: install it in its own environment on a GPU machine "
                              "(python -m venv v && v/bin/pip install vllm && v/bin/pip install -e .)")


def to_vllm_params(params: SamplingParams, stop_token_ids: set[int], max_tokens: int):
    """Our sampling parameters as vLLM's (DELTA outputs: each step yields only the new text)."""
    from vllm import SamplingParams as VSP
    from vllm.sampling_params import RequestOutputKind

    if params.constraint is not None or params.prompt_logprobs is not None:
        raise ValueError("JSON-constrained output and prompt logprobs run on the default backend only")
    return VSP(max_tokens=max_tokens, temperature=params.temperature, top_p=params.top_p,
               top_k=params.top_k if params.top_k > 0 else -1, repetition_penalty=params.repetition_penalty,
               seed=params.seed, stop=list(params.stop) or None,
               stop_token_ids=sorted(stop_token_ids | set(params.stop_token_ids)) or None,
               logprobs=params.logprobs, output_kind=RequestOutputKind.DELTA, skip_special_tokens=False)


class _VllmHandle(RequestHandle):
    def __init__(self, engine: VllmEngine, request_id: str) -> None:
        super().__init__(engine)
        self.request_id = request_id

    def cancel(self) -> None:
        self.cancelled = True
        self._engine._abort(self.request_id)


class VllmEngine:
    """engine.Engine's interface (submit, generate, stats, shutdown, max_seq_len, max_running) on vLLM."""

    def __init__(self, model_path: str | Path, tokenizer, config: VllmConfig | None = None,
                 stop_token_ids: list[int] = (), max_waiting: int = 128) -> None:
        self.path, self.tokenizer = Path(model_path), tokenizer
        self.vconfig = config or VllmConfig()
        self.vconfig.check(self.path)
        require_vllm()
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        c = self.vconfig
        args = AsyncEngineArgs(model=str(self.path), tensor_parallel_size=c.tensor_parallel_size,
                               pipeline_parallel_size=c.pipeline_parallel_size,
                               gpu_memory_utilization=c.gpu_memory_utilization, max_model_len=c.max_model_len,
                               max_num_seqs=c.max_num_seqs, distributed_executor_backend=c.distributed_executor_backend,
                               dtype=c.dtype, trust_remote_code=False)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="mosslm-vllm", daemon=True)
        self._thread.start()
        self._llm = asyncio.run_coroutine_threadsafe(self._start(AsyncLLM, args), self._loop).result()
        self.max_seq_len = self._llm.model_config.max_model_len
        self.max_running, self.max_waiting = c.max_num_seqs, max_waiting
        self.stop_token_ids = set(stop_token_ids)
        self._ids = itertools.count()
        self._active: dict[str, _VllmHandle] = {}
        self._stopped = False
        self.config = c

    @staticmethod
    async def _start(cls, args):
        return cls.from_engine_args(args)

    def submit(self, prompt: list[int], params: SamplingParams) -> RequestHandle:
        if self._stopped:
            raise EngineStopped("the engine is shut down")
        if not prompt:
            raise ValueError("empty prompt")
        if len(prompt) >= self.max_seq_len:
            raise RequestTooLarge(f"the prompt has {len(prompt)} tokens; vLLM's max_model_len is {self.max_seq_len}")
        vparams = to_vllm_params(params, self.stop_token_ids, min(params.max_new_tokens, self.max_seq_len - len(prompt)))
        request_id = f"mosslm-{next(self._ids)}"
        handle = _VllmHandle(self, request_id)
        handle.result.prompt_tokens = len(prompt)
        if params.logprobs is not None:
            handle.result.logprobs = []
        self._active[request_id] = handle
        asyncio.run_coroutine_threadsafe(self._run(handle, list(prompt), vparams), self._loop)
        return handle

    async def _run(self, handle: _VllmHandle, prompt: list[int], vparams) -> None:
        started = time.monotonic()
        result = handle.result
        try:
            async for out in self._llm.generate({"prompt_token_ids": prompt}, vparams, handle.request_id):
                for piece in out.outputs[:1]:
                    now = time.monotonic()
                    if handle.ttft is None and piece.token_ids:
                        handle.ttft = now - started
                    handle.token_times.extend([now] * len(piece.token_ids))
                    result.token_ids.extend(piece.token_ids)
                    result.text += piece.text
                    if result.logprobs is not None and piece.logprobs:
                        for tid, entry in zip(piece.token_ids, piece.logprobs):
                            top = sorted(((i, lp.logprob) for i, lp in entry.items()), key=lambda t: -t[1])
                            result.logprobs.append(TokenLogprob(tid, entry[tid].logprob, top[:vparams.logprobs or 0]))
                    if piece.text:
                        handle._queue.put((piece.text, len(result.token_ids)))
                    if piece.finish_reason is not None:
                        result.finish_reason = "length" if piece.finish_reason == "length" else "stop"
                        result.stopped_on = piece.stop_reason if isinstance(piece.stop_reason, str) else None
        except Exception as e:  # noqa: BLE001 - the reader gets it, not the loop
            handle._queue.put(e)
        finally:
            self._active.pop(handle.request_id, None)
            handle.finished.set()
            handle._queue.put(_DONE)

    def _abort(self, request_id: str) -> None:
        if request_id in self._active:
            asyncio.run_coroutine_threadsafe(self._llm.abort(request_id), self._loop)

    def generate(self, prompt: list[int], params: SamplingParams):
        return self.submit(prompt, params).wait()

    def stats(self) -> dict:
        return {"running": len(self._active), "waiting": 0, "free_slots": max(0, self.max_running - len(self._active)),
                "steps": 0, "prefix_hit_tokens": 0, "prompt_tokens": 0, "backend": "vllm"}

    def shutdown(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        for request_id in list(self._active):
            self._abort(request_id)
        self._llm.shutdown()
        self._loop.call_soon_threadsafe(self._loop.stop)
