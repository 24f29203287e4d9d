"""Run a benchmark in both CPU settings: as this CPU is, and as an AVX2-only CPU.

The AVX2 setting caps torch's, oneDNN's and MKL's kernels at AVX2 through their
environment variables, which must be set before torch starts, so each setting
runs as its own process. On a CPU without AVX-512 both settings are the same
thing and only `native` runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

AVX2_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


def add_argument(ap) -> None:
    ap.add_argument("--isa", choices=["native", "avx2", "both"], default="both",
                    help="native: this CPU as it is; avx2: kernels capped at AVX2 (an AVX2-only CPU, as most "
                         "laptops); both (default): one process each, then a summary")


def has_avx512() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return " avx512f" in f.read()
    except OSError:
        return False


def run_settings(args) -> list[tuple[str, dict]] | None:
    """In the parent (`--isa both` or `avx2`): run the script once per setting, each as a child process
    whose output streams through; return [(setting, its JSON last line)]. None in a child: measure here."""
    if os.environ.get("MOSSLM_BENCH_CHILD"):
        return None
    if args.isa == "native" or (args.isa == "both" and not has_avx512()):
        return None  # measure in this process
    settings = ["native", "avx2"] if args.isa == "both" else ["avx2"]
    out = []
    for setting in settings:  # a child sees MOSSLM_BENCH_CHILD and measures, whatever its --isa says
        env = {**os.environ, "MOSSLM_BENCH_CHILD": setting, **(AVX2_ENV if setting == "avx2" else {})}
        print(f"\n######## setting: {setting}" + (" (" + " ".join(f"{k}={v}" for k, v in AVX2_ENV.items()) + ")"
                                                 if setting == "avx2" else " (this CPU as it is)"), flush=True)
        proc = subprocess.Popen([sys.executable, *sys.argv], env=env, stdout=subprocess.PIPE, text=True)
        last = ""
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            if line.strip():
                last = line
        if proc.wait() != 0:
            sys.exit(f"the {setting} run failed (exit {proc.returncode})")
        out.append((setting, json.loads(last)))
    return out


def setting() -> str:
    return os.environ.get("MOSSLM_BENCH_CHILD", "native")
