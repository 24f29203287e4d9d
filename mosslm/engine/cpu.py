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
"""

from __future__ import annotations

import ctypes
import functools
import logging
import threading
import types

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
_engine_thread = threading.local()  # .on: this thread's calls use the packed weights


def _packed_linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


def _linear_forward(module: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    if getattr(_engine_thread, "on", False):
        rows = x.reshape(-1, x.shape[-1]).contiguous()
        y = _packed_linear(rows, module._mosslm_packed, module.bias)
        return y.view(*x.shape[:-1], y.shape[-1])
    return F.linear(x, module.weight, module.bias)


def pack_linears(model: torch.nn.Module, rows_hint: int = 16) -> bool:
    """Give every CPU fp32/bf16 nn.Linear of the model a oneDNN-packed copy of its weight.

    False (and the model untouched) when oneDNN is missing, the op fails here,
    or the weights are larger than MAX_PACKED_BYTES."""
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.weight.device.type == "cpu"
               and m.weight.dtype in (torch.float32, torch.bfloat16)]
    if not linears or not torch.backends.mkldnn.is_available():
        return False
    size = sum(m.weight.numel() * m.weight.element_size() for m in linears)
    if size > MAX_PACKED_BYTES:
        log.info("mosslm engine: %.1f GB of linear weights; not packing a second copy", size / 2**30)
        return False
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
        return False
    for m, p in zip(linears, packed):
        m._mosslm_packed = p
        m.forward = types.MethodType(_linear_forward, m)
    return True


class engine_calls:
    """While active on this thread, packed linears use their packed weights."""

    def __enter__(self):
        self._before = getattr(_engine_thread, "on", False)
        _engine_thread.on = True

    def __exit__(self, *exc):
        _engine_thread.on = self._before
