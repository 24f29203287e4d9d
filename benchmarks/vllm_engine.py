"""The vLLM backend through mosslm's engine seam (engine/vllm_backend.py): batch-1 decode and aggregate
tokens/s at 16 streams, on a GPU machine with vLLM installed (scripts/gpu_check.sh runs it).

    python benchmarks/vllm_engine.py --out DIR [--model FOLDER] [--new-tokens 64] [--tensor-parallel-size N]

Without --model it serves the 34M `small` preset (random weights, a tokenizer trained here, as
benchmarks/quant.py builds it). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from engine import prompt_text  # noqa: E402
from quant import prepare_models  # noqa: E402

from mosslm.engine import SamplingParams  # noqa: E402
from mosslm.engine.vllm_backend import VllmConfig, VllmEngine  # noqa: E402
from mosslm.model import load_without_weights  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--model", help="a Hugging Face folder (default: the small preset, built in --out)")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--tensor-parallel-size", type=int, default=1)
    args = ap.parse_args()
    folder = Path(args.model) if args.model else prepare_models("small", Path(args.out))[0]
    tok = load_without_weights(folder).tokenizer
    engine = VllmEngine(folder, tok, VllmConfig(tensor_parallel_size=args.tensor_parallel_size,
                                                gpu_memory_utilization=0.5, max_num_seqs=32))
    params = SamplingParams(max_new_tokens=args.new_tokens, temperature=0.0)
    prompts = [tok.encode(prompt_text(i), add_special_tokens=False) for i in range(16)]
    try:
        engine.submit(prompts[0], SamplingParams(max_new_tokens=4, temperature=0.0)).wait(300)  # warm-up
        rates = []
        for p in prompts[:3]:
            h = engine.submit(p, params)
            h.wait(300)
            rates.append((len(h.result.token_ids) - 1) / max(1e-9, h.token_times[-1] - h.token_times[0]))
        started = time.perf_counter()
        handles = [engine.submit(p, params) for p in prompts]
        tokens = sum(len(h.wait(300).token_ids) for h in handles)
        aggregate = tokens / (time.perf_counter() - started)
    finally:
        engine.shutdown()
    print(json.dumps({"model": str(folder), "batch1_tok_s": statistics.median(rates), "c16_tok_s": aggregate,
                      "tensor_parallel_size": args.tensor_parallel_size}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
