"""mosslm's own int4 and int8 CPU kernels (csrc/q4_cpu.cpp), built on first use where they can run.

Why a kernel of our own: torch's `_weight_int4pack_mm_for_cpu` converts each int4 weight to floating point
and reads SmolLM2-135M's int4 weights at about 10-12 GB/s on 2 Xeon cores, and a decode step pays
PyTorch's dispatch for ~50 small operations a layer on top. This kernel quantizes the activations to
int8 per block of 64 (what llama.cpp does) and multiplies with AVX-512 VNNI's u8 x s8 dot products, and
`q4_decode_step` runs a whole Llama-family decode step in one call (benchmarks/quant.py measures both).

Where it cannot run, `load()` says why and callers use torch's kernel:
- a CPU without AVX-512 VNNI (most laptops: AVX2 only), or another architecture;
- no C++ compiler (torch.utils.cpp_extension builds the file once, about 30 s, into the torch extensions
  cache);
- MOSSLM_Q4_KERNEL=0 in the environment.
"""

from __future__ import annotations

import logging
import os
import platform
import threading
from pathlib import Path

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("csrc") / "q4_cpu.cpp"
BLOCK = 64  # activation block: inputs come in multiples of it, weight groups in multiples of 32

_lock = threading.Lock()
_state: dict = {}


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def unavailable_reason() -> str | None:
    """Why the kernel cannot run here (None: it can), without building it."""
    if os.environ.get("MOSSLM_Q4_KERNEL", "1") == "0":
        return "turned off (MOSSLM_Q4_KERNEL=0)"
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"not an x86-64 CPU ({platform.machine()})"
    flags = cpu_flags()
    missing = [f for f in ("avx512f", "avx512bw", "avx512vl", "avx512_vnni") if f not in flags]
    if missing:
        return f"the CPU lacks {', '.join(missing)}"
    return None


def load():
    """The built extension module, or None (the reason is in `reason()` and logged once)."""
    with _lock:
        if "module" in _state:
            return _state["module"]
        module, why = None, unavailable_reason()
        if why is None:
            try:
                from torch.utils.cpp_extension import load as build

                module = build("mosslm_q4_cpu", [str(SOURCE)], extra_cflags=["-O3", "-fopenmp"],
                               extra_ldflags=["-fopenmp"], verbose=False)
                if not module.cpu_has_vnni():
                    module, why = None, "the CPU reports no AVX-512 VNNI"
            except Exception as exc:  # no compiler, headers or a failed build: torch's kernel still works
                module, why = None, f"it did not build ({type(exc).__name__}: {str(exc).strip()[-300:]})"
        if why is not None:
            log.info("mosslm int4 kernel not used: %s", why)
        _state["module"], _state["reason"] = module, why
        return module


def reason() -> str | None:
    load()
    return _state.get("reason")


def supports_int8(in_features: int) -> bool:
    return in_features % BLOCK == 0


def supports(in_features: int, group_size: int) -> bool:
    power_of_two = group_size >= 32 and group_size & (group_size - 1) == 0
    return power_of_two and in_features % group_size == 0 and in_features % BLOCK == 0


def reset() -> None:
    """Forget the decision, so that the next `load()` checks again (after MOSSLM_Q4_KERNEL changes)."""
    with _lock:
        _state.clear()
