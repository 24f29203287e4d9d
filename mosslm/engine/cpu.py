"""CPU fast paths the engine applies to the model it serves (measured in benchmarks/engine.py).

1. OpenMP team release. libgomp cuts its workers' spin-waiting to ~100 spins
   as soon as it manages more threads than there are CPUs. The engine computes
   on its own thread, and the thread that loaded the model keeps an idle
   OpenMP team; with both teams alive every parallel op pays a futex wake-up
   (a bf16 [1,576]x[576,1536] linear on 2 cores: 60 us on the loading thread,
   120 us on the engine thread). Releasing the loading thread's team
   (`omp_pause_resource_all`, OpenMP 5.0) gives the engine thread full speed.
   It comes back only if that thread runs parallel torch ops again.
2. Packed weights. Decode multiplies a few rows by every weight, and for
   few rows MKL's GEMM (what F.linear uses for fp32) reads the weights at
   5-12 GB/s on 2 cores. oneDNN's linear with weights reordered once into its
   blocked layout (what Inductor's freezing does) reads them about twice as
   fast. Measured on SmolLM2's 30 layers of weights, fp32, ms per pass:
   1 row 36.6 -> 21.3, 4 rows 49.9 -> 18.8, 16 rows 61.7 -> 29.9,
   64 rows 133 -> 83; bf16: 17.1 -> 14.1, 25.7 -> 18.5 (1 and 16 rows).
   The packed copies cost one more copy of the linear weights, so models
   whose linears exceed MAX_PACKED_BYTES are not packed. Only calls on the
   engine's thread use them (a thread-local switch): anyone else calling the
   model gets the stock F.linear, bit for bit.

Decided by the CPU at hand, not assumed:
- Packing is kept only where it measures faster on this model's own weights
  (`pack_linears(..., measure=True)`, the engine's default): one pass over up
  to MEASURE_BYTES of them at 1 row and at the engine's batch, stock against
  packed, about 0.1-0.5 s at start-up. On AVX-512 and on AVX2-capped kernels
  (ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2)
  oneDNN's packed fp32 linear wins at every batch size from 1 to 32 rows
  (SmolLM2's 210 decoder linears, 1 row: 34.6 -> 16.2 ms AVX-512, 31.4 ->
  23.1 ms AVX2; 16 rows 67.9 -> 36.2 and 47.0 -> 29.7 ms), and MKL's packed
  GEMM (what Inductor uses for fp32) never beat it, so it is not a candidate.
- Why the batch-1 lead over transformers depends on the machine: decode at
  batch 1 reads every weight once a token, and the packed kernel wins by
  streaming weights at about the memory's read bandwidth where F.linear
  (MKL) gets half of it. On this 2-core EPYC (SmolLM2, 513 MB of fp32 linear
  weights), the start-up measurement at 1 row gave 29 GB/s packed against
  17 GB/s for F.linear with AVX2-capped kernels (9.3 vs 16.1 ms for 256 MB),
  while the machine copies at ~60 GB/s (read + write); the engine's whole decode
  step, with attention, norms and Python, reads at 17.7 GB/s against
  transformers' 12.4 (1.42x, AVX2 kernels; benchmarks/engine.py). Where
  F.linear itself comes near the bandwidth (low bandwidth for the compute,
  or a BLAS that does better at few rows), the lead shrinks towards the
  per-step overhead that both share: the bytes set the ceiling, not the ISA.
  `moss env` measures the bandwidth; bf16 weights halve the bytes where the
  CPU has native bf16 (`dtype auto`), and quantized weights are the way past
  it elsewhere.
- The OpenMP team release depends on the OpenMP runtime, not the ISA: it is
  done wherever torch runs more than one thread on a runtime that has
  omp_pause_resource_all.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import threading
import time
import types
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)


@functools.cache
def _openmp_runtime() -> ctypes.CDLL | None:
    """The OpenMP library torch already loaded (libgomp, libomp or libiomp5), if any."""
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "omp" in line.rsplit("/", 1)[-1]}
    except OSError:
        return None
    for path in sorted(paths):
        name = path.rsplit("/", 1)[-1]
        if name.startswith(("libgomp", "libomp", "libiomp5")):
            try:
                lib = ctypes.CDLL(path)
                lib.omp_pause_resource_all.argtypes = [ctypes.c_int]
                return lib
            except (OSError, AttributeError):
                continue
    return None


def release_openmp_team() -> bool:
    """Free the calling thread's idle OpenMP worker threads; True when it did."""
    lib = _openmp_runtime()
    if lib is None or torch.get_num_threads() <= 1:
        return False
    return lib.omp_pause_resource_all(2) == 0  # 2 = omp_pause_hard


MAX_PACKED_BYTES = 4 << 30
MEASURE_BYTES = 256 << 20   # weights timed to decide on packing: more than the caches hold, a quick pass
_engine_thread = threading.local()  # .on: this thread's calls use the packed weights


def _packed_linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


def _linear_forward(module: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    if getattr(_engine_thread, "on", False):
        rows = x.reshape(-1, x.shape[-1]).contiguous()
        y = _packed_linear(rows, module._mosslm_packed, module.bias)
        return y.view(*x.shape[:-1], y.shape[-1])
    return F.linear(x, module.weight, module.bias)


@dataclass
class PackResult:
    """Whether the model's linears now use packed weights, and why (timings in ms per pass)."""
    packed: bool
    reason: str
    timings: dict[str, float] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return self.packed


def _pass_ms(fn, weights: list[torch.Tensor], rows: int, reps: int = 2) -> float:
    """Milliseconds for one pass of fn(x, i) over the weights with `rows` input rows (best of reps)."""
    xs = {w.shape[1]: torch.linspace(-1, 1, rows * w.shape[1]).view(rows, -1).to(w.dtype) for w in weights}
    best = float("inf")
    with torch.no_grad():
        for _ in range(reps + 1):  # the first pass warms up
            start = time.perf_counter()
            for i, w in enumerate(weights):
                fn(xs[w.shape[1]], i)
            best = min(best, time.perf_counter() - start)
    return best * 1000


def time_linears(linears: list[torch.nn.Linear], packed: list[torch.Tensor], rows_hint: int) -> dict[str, float]:
    """Stock F.linear against the packed weights on up to MEASURE_BYTES of the model's own linears."""
    chosen, size = [], 0
    for i, m in enumerate(linears):
        if size and size + m.weight.numel() * m.weight.element_size() > MEASURE_BYTES:
            break
        chosen.append(i)
        size += m.weight.numel() * m.weight.element_size()
    weights = [linears[i].weight.detach() for i in chosen]
    out = {}
    for rows in sorted({1, max(1, rows_hint)}):
        out[f"stock_{rows}"] = _pass_ms(lambda x, j: F.linear(x, weights[j]), weights, rows)
        out[f"packed_{rows}"] = _pass_ms(lambda x, j: _packed_linear(x, packed[chosen[j]], None), weights, rows)
    return out


def pack_linears(model: torch.nn.Module, rows_hint: int = 16, measure: bool = False) -> PackResult:
    """Give every CPU fp32/bf16 nn.Linear of the model a oneDNN-packed copy of its weight.

    Not packed (and the model untouched) when oneDNN is missing, the op fails here, the weights are
    larger than MAX_PACKED_BYTES, or, with `measure`, packed is not faster here at 1 row and at
    `rows_hint` rows together."""
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.weight.device.type == "cpu"
               and m.weight.dtype in (torch.float32, torch.bfloat16)]
    if not linears or not torch.backends.mkldnn.is_available():
        return PackResult(False, "no CPU linears" if not linears else "oneDNN is not available")
    size = sum(m.weight.numel() * m.weight.element_size() for m in linears)
    if size > MAX_PACKED_BYTES:
        log.info("mosslm engine: %.1f GB of linear weights; not packing a second copy", size / 2**30)
        return PackResult(False, f"{size / 2**30:.1f} GB of linear weights: no room for a packed copy")
    try:
        with torch.no_grad():
            packed = [torch.ops.mkldnn._reorder_linear_weight(m.weight.detach(), rows_hint) for m in linears]
            m = linears[0]
            x = torch.linspace(-1, 1, 3 * m.in_features).view(3, -1).to(m.weight.dtype)  # no RNG draw: callers' seeds stay
            bias = None if m.bias is None else m.bias.detach()
            if not torch.allclose(_packed_linear(x, packed[0], bias).float(), F.linear(x, m.weight, bias).float(),
                                  rtol=2e-2, atol=2e-2):
                raise RuntimeError("packed linear disagrees with F.linear")
    except (RuntimeError, AttributeError, NotImplementedError) as e:
        log.warning("mosslm engine: packed weights unavailable (%s); using F.linear", e)
        return PackResult(False, f"packed linear failed here: {e}")
    timings = {}
    if measure:
        timings = time_linears(linears, packed, rows_hint)
        stock = sum(v for k, v in timings.items() if k.startswith("stock"))
        fast = sum(v for k, v in timings.items() if k.startswith("packed"))
        if fast >= stock:
            return PackResult(False, f"oneDNN-packed weights measured slower here ({fast:.1f} vs {stock:.1f} ms)",
                              timings)
    for m, p in zip(linears, packed):
        m._mosslm_packed = p
        m.forward = types.MethodType(_linear_forward, m)
    if not timings:
        return PackResult(True, "oneDNN-packed weights (not measured)")
    return PackResult(True, "oneDNN-packed weights: " + ", ".join(
        f"{r} rows {timings[f'stock_{r}']:.1f} -> {timings[f'packed_{r}']:.1f} ms"
        for r in sorted({int(k.split('_')[1]) for k in timings})), timings)


class engine_calls:
    """While active on this thread, packed linears use their packed weights."""

    def __enter__(self):
        self._before = getattr(_engine_thread, "on", False)
        _engine_thread.on = True

    def __exit__(self, *exc):
        _engine_thread.on = self._before
