"""mosslm's own int4 and int8 CPU kernels (csrc/q4_cpu.cpp), built on first use where they can run.

Why a kernel of our own: torch's `_weight_int4pack_mm_for_cpu` converts each int4 weight to floating point
and reads SmolLM2-135M's int4 weights at about 10-12 GB/s on 2 Xeon cores, and a decode step pays
PyTorch's dispatch for ~50 small operations a layer on top. This kernel quantizes the activations to
int8 with a scale per 32 inputs (what llama.cpp does) and multiplies with integer u8 x s8 dot products, and
`q4_decode_step` runs a whole Llama-family decode step in one call (benchmarks/quant.py measures both).

The source builds for one of two instruction sets, whichever the CPU has (`isa()` names it):
- `avx512_vnni`: AVX-512 VNNI's `vpdpbusd`, 64 products an instruction (Xeon since Cascade Lake,
  EPYC since Zen 4);
- `avx2`: `vpmaddubsw` + `vpmaddwd`, 32 products in two (most laptops, EPYC before Zen 4).

Where it cannot run, `load()` says why and callers use torch's kernel:
- a CPU with neither (no AVX2 and FMA), or another architecture;
- no C++ compiler (torch.utils.cpp_extension builds the file once, about 30 s, into the torch extensions
  cache);
- MOSSLM_Q4_KERNEL=0 in the environment; MOSSLM_Q4_KERNEL=avx2 takes the AVX2 build on an AVX-512 CPU
  (to test and compare it).
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


def chosen_isa() -> tuple[str | None, str | None]:
    """(the instruction set to build for, None) or (None, why the kernel cannot run here), without building."""
    setting = os.environ.get("MOSSLM_Q4_KERNEL", "1")
    if setting == "0":
        return None, "turned off (MOSSLM_Q4_KERNEL=0)"
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None, f"not an x86-64 CPU ({platform.machine()})"
    flags = cpu_flags()
    if setting != "avx2" and all(f in flags for f in ("avx512f", "avx512bw", "avx512vl", "avx512_vnni")):
        return "avx512_vnni", None
    missing = [f for f in ("avx2", "fma", "f16c") if f not in flags]
    if missing:
        return None, f"the CPU lacks {', '.join(missing)}"
    return "avx2", None


def unavailable_reason() -> str | None:
    """Why the kernel cannot run here (None: it can), without building it."""
    return chosen_isa()[1]


def load():
    """The built extension module, or None (the reason is in `reason()` and logged once)."""
    with _lock:
        if "module" in _state:
            return _state["module"]
        module, (target, why) = None, chosen_isa()
        if why is None:
            try:
                from torch.utils.cpp_extension import load as build

                name, defines = ("mosslm_q4_cpu", []) if target == "avx512_vnni" else ("mosslm_q4_avx2", ["-DMOSS_AVX2"])
                module = build(name, [str(SOURCE)], extra_cflags=["-O3", "-fopenmp", *defines],
                               extra_ldflags=["-fopenmp"], verbose=False)
                if not module.cpu_supported():
                    module, why = None, f"the CPU does not run the {target} build"
            except Exception as exc:  # no compiler, headers or a failed build: torch's kernel still works
                module, why = None, f"it did not build ({type(exc).__name__}: {str(exc).strip()[-300:]})"
        if why is not None:
            log.info("mosslm int4/int8 kernel not used: %s", why)
        _state["module"], _state["reason"] = module, why
        return module


def isa() -> str | None:
    """The instruction set the loaded kernel was built for ("avx512_vnni" or "avx2"), None without one."""
    module = load()
    return module.isa() if module is not None else None


def reason() -> str | None:
    load()
    return _state.get("reason")


def supports_int8(in_features: int, group_size: int | None = None) -> bool:
    return in_features % BLOCK == 0 and (group_size or BLOCK) % BLOCK == 0


def supports(in_features: int, group_size: int) -> bool:
    power_of_two = group_size >= 32 and group_size & (group_size - 1) == 0
    return power_of_two and in_features % group_size == 0 and in_features % BLOCK == 0


def reset() -> None:
    """Forget the decision, so that the next `load()` checks again (after MOSSLM_Q4_KERNEL changes)."""
    with _lock:
        _state.clear()
