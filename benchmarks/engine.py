"""Engine benchmark: transformers `generate` at batch 1 against our engine at batch 1,
4, 16 and 32 concurrent requests, prefix caching of the MOSS meta instruction,
and llama.cpp (llama-cpp-python) on the same weights when it is installed.

    python benchmarks/engine.py --model DIR_OR_GGUF [--new-tokens 64] [--dtype auto] [--isa both]
    python benchmarks/engine.py --model preset:small --tokenizer TOKENIZER_DIR   # a random 34M-class model

`--isa both` (the default on an AVX-512 CPU) runs everything twice, each in its
own process: on this CPU as it is, and with the kernels capped at AVX2 (as on
most laptops), then prints both settings side by side (benchmarks/isa.py).
`--dtype auto` (default) takes the precision `moss chat` would take in that
setting; transformers runs at the same dtype.

Every request is the MOSS meta instruction plus a short user message, and
generates exactly --new-tokens tokens (no early stop), greedy. Decode tok/s
counts tokens after the first one over the time after the first one (prefill
excluded); aggregate tok/s counts all tokens over the wall time (also given for
the engine at batch 1, so that the concurrent runs compare like for like). The
last line is JSON with every figure and the ratios to the transformers batch-1
baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import isa  # noqa: E402  (benchmarks/isa.py)
from mosslm import protocol
from mosslm.engine import SamplingParams
from mosslm.engine.engine import Engine, EngineConfig

MESSAGES = ["你好！", "What is 2+2?", "讲个笑话吧。", "Who are you?", "今天天气怎么样？", "Tell me about the moon.",
            "帮我写一首短诗。", "How do I boil an egg?", "长城有多长？", "Say hello in French.", "推荐一本书。",
            "What is BPE?", "北京有什么好吃的？", "Name three colours.", "怎么学好英语？", "Why is the sky blue?"]


def prompt_text(i: int) -> str:
    return protocol.meta_instruction("moss") + f"<|Human|>: {MESSAGES[i % len(MESSAGES)]} ({i})<eoh>\n<|MOSS|>:"


def resolve_dtype(name: str, model) -> torch.dtype:
    from mosslm.hardware import Workload, choose_dtype

    return choose_dtype(name, "cpu", Workload.decoding(model.config))


def load_model(spec: str, tokenizer_dir: str | None, dtype: torch.dtype):
    if spec.startswith("preset:"):
        from mosslm.model import build_model
        from mosslm.tokenizer import load_any

        if not tokenizer_dir:
            sys.exit("--tokenizer DIR is needed with preset:NAME")
        tok = load_any(tokenizer_dir)
        model = build_model(spec.split(":", 1)[1], tok, seed=0, max_position_embeddings=2048)
        return model.to(dtype).eval(), tok, None
    from mosslm.model import load

    loaded = load(spec)
    return loaded.model.to(dtype).eval(), loaded.tokenizer, spec if spec.endswith(".gguf") else None


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def hf_batch1(model, tok, n_prompts: int, new: int) -> dict:
    model.generation_config.eos_token_id = None
    decode, ttft = [], []
    for i in range(n_prompts):
        ids = torch.tensor([tok.encode(prompt_text(i), add_special_tokens=False)])
        mask = torch.ones_like(ids)
        t0 = time.perf_counter()
        model.generate(ids, attention_mask=mask, max_new_tokens=1, do_sample=False, pad_token_id=0)
        t1 = time.perf_counter()
        model.generate(ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                       pad_token_id=0)
        t2 = time.perf_counter()
        ttft.append(t1 - t0)
        decode.append((new - 1) / max(1e-9, (t2 - t1) - (t1 - t0)))
    return {"tok_s": statistics.median(decode), "ttft_p50_s": statistics.median(ttft)}


def run_engine(engine: Engine, tok, ids: list[int], new: int) -> dict:
    """Submit all requests at once; gather throughput and latency figures."""
    params = SamplingParams(max_new_tokens=new, temperature=0.0)
    prompts = [tok.encode(prompt_text(i), add_special_tokens=False) for i in ids]
    t0 = time.perf_counter()
    handles = [engine.submit(p, params) for p in prompts]
    for h in handles:
        h.wait()
    wall = time.perf_counter() - t0
    tokens = sum(len(h.result.token_ids) for h in handles)
    itl = [b - a for h in handles for a, b in zip(h.token_times, h.token_times[1:])]
    decode = [(len(h.token_times) - 1) / (h.token_times[-1] - h.token_times[0]) for h in handles
              if len(h.token_times) > 1]
    return {"tok_s": tokens / wall, "decode_tok_s": statistics.median(decode) if decode else None,
            "ttft_p50_s": pct([h.ttft for h in handles], 0.5), "ttft_p99_s": pct([h.ttft for h in handles], 0.99),
            "itl_p50_s": pct(itl, 0.5) if itl else None}


def llamacpp_batch1(gguf: str | None, n_prompts: int, new: int) -> float | None:
    if gguf is None:
        return None
    try:
        from llama_cpp import Llama
    except ImportError:
        return None
    llm = Llama(model_path=gguf, n_ctx=2048, n_threads=os.cpu_count() or 2, verbose=False)
    rates = []
    for i in range(n_prompts):
        ids = llm.tokenize(prompt_text(i).encode(), add_bos=False, special=True)
        times = []
        for _ in llm.generate(ids, temp=0.0, reset=True):  # greedy; prompt eval happens before the first token
            times.append(time.perf_counter())
            if len(times) == new:
                break
        rates.append((len(times) - 1) / (times[-1] - times[0]))
    return statistics.median(rates)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="checkpoint folder, .gguf file, or preset:NAME (random weights)")
    ap.add_argument("--tokenizer", help="tokenizer folder for preset:NAME")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--batch1-prompts", type=int, default=3)
    ap.add_argument("--dtype", choices=["auto", "fp32", "bf16"], default="auto",
                    help="dtype of the transformers baseline and the engine (auto: what `moss chat` picks here)")
    ap.add_argument("--engine-dtype", choices=["fp32", "bf16"], default=None,
                    help="dtype the engine serves in (default: --dtype); when it differs, transformers is "
                         "also measured at the engine's dtype")
    ap.add_argument("--max-seq-len", type=int, default=1024)
    isa.add_argument(ap)
    args = ap.parse_args()
    settings = isa.run_settings(args)
    if settings is not None:
        return summarize(settings)
    torch.manual_seed(0)
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    model, tok, gguf = load_model(args.model, args.tokenizer, torch.float32)
    choice = resolve_dtype(args.dtype, model)
    args.dtype = choice.dtype
    dtype = dtypes[args.dtype]
    engine_dtype = dtypes[args.engine_dtype or args.dtype]
    model = model.to(dtype)
    n_params = sum(p.numel() for p in model.parameters())
    prompt_len = len(tok.encode(prompt_text(0), add_special_tokens=False))
    print(f"model {args.model}: {n_params / 1e6:.1f}M parameters, transformers {args.dtype}, engine "
          f"{args.engine_dtype or args.dtype}, {torch.get_num_threads()} threads; "
          f"prompt ~{prompt_len} tokens (MOSS meta instruction + a short message), {args.new_tokens} new tokens")
    new = args.new_tokens
    res: dict = {"model": args.model, "setting": isa.setting(), "isa": torch.backends.cpu.get_cpu_capability(),
                 "dtype_choice": choice.line(), "params_m": round(n_params / 1e6, 1), "dtype": args.dtype,
                 "prompt_tokens": prompt_len, "new_tokens": new}

    hf = hf_batch1(model, tok, args.batch1_prompts, new)
    res["hf_batch1_tok_s"], res["hf_batch1_ttft_s"] = hf["tok_s"], hf["ttft_p50_s"]
    print(f"transformers batch 1: {hf['tok_s']:.1f} tok/s decode", file=sys.stderr, flush=True)
    res["engine_dtype"] = args.engine_dtype or args.dtype
    if engine_dtype != dtype:
        model = model.to(engine_dtype)
        res["hf_batch1_engine_dtype_tok_s"] = hf_batch1(model, tok, args.batch1_prompts, new)["tok_s"]
        print(f"transformers batch 1 at {res['engine_dtype']}: {res['hf_batch1_engine_dtype_tok_s']:.1f} tok/s",
              file=sys.stderr, flush=True)

    def engine(prefix: bool = True) -> Engine:
        cfg = EngineConfig(max_running=32, max_waiting=64, max_seq_len=args.max_seq_len,
                           kv_budget_mb=32 * args.max_seq_len * kv_bytes_per_token(model) / 2**20 + 1, prefix_caching=prefix)
        return Engine(model, tok, cfg)

    eng = engine()
    res["engine_linears"] = eng.packing.reason if eng.packing is not None else "stock F.linear"
    print(f"engine linears: {res['engine_linears']}", file=sys.stderr, flush=True)
    run_engine(eng, tok, [999], 4)  # warm-up
    b1 = [run_engine(eng, tok, [i], new) for i in range(args.batch1_prompts)]
    res["engine_batch1_tok_s"] = statistics.median(r["decode_tok_s"] for r in b1)
    # The same figure as the concurrent runs' aggregate: all tokens over the wall time, first token included.
    res["engine_batch1_aggregate_tok_s"] = statistics.median(r["tok_s"] for r in b1)
    print(f"engine batch 1: {res['engine_batch1_tok_s']:.1f} tok/s decode", file=sys.stderr, flush=True)
    for c in (4, 16, 32):
        r = run_engine(eng, tok, list(range(100 * c, 100 * c + c)), new)
        print(f"engine {c} concurrent: {r['tok_s']:.1f} tok/s", file=sys.stderr, flush=True)
        res[f"engine_c{c}_tok_s"] = r["tok_s"]
        res[f"engine_c{c}_ttft_p50_s"], res[f"engine_c{c}_ttft_p99_s"] = r["ttft_p50_s"], r["ttft_p99_s"]
        res[f"engine_c{c}_itl_p50_s"] = r["itl_p50_s"]
    eng.shutdown()

    # Time to first token for short messages, one at a time: no reuse, then the meta instruction cached.
    cold = engine(prefix=False)
    ttft_cold = [run_engine(cold, tok, [500 + i], 1)["ttft_p50_s"] for i in range(6)]
    cold.shutdown()
    warm = engine(prefix=True)
    run_engine(warm, tok, [499], 1)  # puts the meta instruction into a slot
    ttft_warm = [run_engine(warm, tok, [600 + i], 1)["ttft_p50_s"] for i in range(6)]
    warm.shutdown()
    res["ttft_p50_uncached_s"], res["ttft_p50_prefix_cached_s"] = statistics.median(ttft_cold), statistics.median(ttft_warm)
    res["llamacpp_batch1_tok_s"] = llamacpp_batch1(gguf, args.batch1_prompts, new)

    # Batch-1 decode reads every linear weight once a token: how close each comes to the memory bandwidth.
    from mosslm.hardware import copy_bandwidth_gbs

    weight_bytes = sum(m.weight.numel() * m.weight.element_size() for m in model.modules()
                       if isinstance(m, torch.nn.Linear))
    res["linear_weight_mb"] = weight_bytes / 2**20
    res["copy_bandwidth_gbs"] = copy_bandwidth_gbs()
    res["hf_batch1_weight_read_gbs"] = weight_bytes * res["hf_batch1_tok_s"] / 1e9
    res["engine_batch1_weight_read_gbs"] = weight_bytes * res["engine_batch1_tok_s"] / 1e9
    base = res["hf_batch1_tok_s"]
    ratios = {f"{k}_vs_hf_batch1": v / base for k, v in res.items()
              if k.endswith("_tok_s") and k != "hf_batch1_tok_s" and v is not None}
    ratios["engine_c16_vs_engine_batch1"] = res["engine_c16_tok_s"] / res["engine_batch1_tok_s"]
    ratios["engine_c16_vs_engine_batch1_aggregate"] = res["engine_c16_tok_s"] / res["engine_batch1_aggregate_tok_s"]
    ratios["prefix_cache_ttft_speedup"] = res["ttft_p50_uncached_s"] / res["ttft_p50_prefix_cached_s"]
    res.update(ratios)

    rows = [(f"transformers generate, batch 1 (decode, {args.dtype})", base, None, None)]
    if "hf_batch1_engine_dtype_tok_s" in res:
        rows.append((f"transformers generate, batch 1 (decode, {res['engine_dtype']})",
                     res["hf_batch1_engine_dtype_tok_s"], None, None))
    rows += [
        (f"engine, batch 1 (decode, {res['engine_dtype']})", res["engine_batch1_tok_s"], None, None)]
    rows += [(f"engine, {c} concurrent (aggregate)", res[f"engine_c{c}_tok_s"], res[f"engine_c{c}_ttft_p50_s"],
              res[f"engine_c{c}_ttft_p99_s"]) for c in (4, 16, 32)]
    if res["llamacpp_batch1_tok_s"] is not None:
        rows.append(("llama.cpp, batch 1 (decode)", res["llamacpp_batch1_tok_s"], None, None))
    print("\n| run | tok/s | vs HF batch 1 | TTFT p50 s | TTFT p99 s | ITL p50 ms |")
    print("|---|---|---|---|---|---|")
    for name, tps, p50, p99 in rows:
        c = next((k for k in (4, 16, 32) if name.startswith(f"engine, {k} ")), None)
        itl = res.get(f"engine_c{c}_itl_p50_s") if c else None
        print(f"| {name} | {tps:.1f} | {tps / base:.2f}x | {'' if p50 is None else f'{p50:.3f}'} | "
              f"{'' if p99 is None else f'{p99:.3f}'} | {'' if itl is None else f'{itl * 1000:.1f}'} |")
    if res["llamacpp_batch1_tok_s"] is None:
        print("| llama.cpp | not measured: llama-cpp-python is not installed (or the model is not a .gguf) | | | | |")
    print(f"\nprefix caching, short messages one at a time: TTFT p50 {res['ttft_p50_uncached_s']:.3f} s uncached -> "
          f"{res['ttft_p50_prefix_cached_s']:.3f} s with the meta instruction cached "
          f"({res['prefix_cache_ttft_speedup']:.1f}x)")
    print(f"batch 1 reads {res['linear_weight_mb']:.0f} MB of linear weights a token: transformers at "
          f"{res['hf_batch1_weight_read_gbs']:.1f} GB/s, the engine at {res['engine_batch1_weight_read_gbs']:.1f} GB/s; "
          f"this machine copies memory at {res['copy_bandwidth_gbs']:.1f} GB/s (read + write)")
    print(f"16 concurrent (aggregate) vs engine batch 1: {res['engine_c16_vs_engine_batch1']:.1f}x its decode tok/s, "
          f"{res['engine_c16_vs_engine_batch1_aggregate']:.1f}x its aggregate tok/s "
          f"({res['engine_batch1_aggregate_tok_s']:.1f}); vs transformers batch 1: "
          f"{res['engine_c16_tok_s_vs_hf_batch1']:.1f}x")
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in res.items()}))


def summarize(settings: list[tuple[str, dict]]) -> None:
    """Both settings side by side, with the acceptance ratios."""
    print("\n| setting | dtype | HF batch 1 | engine batch 1 | vs HF (>= 1.2x) | 16 concurrent | "
          "vs engine batch 1 (>= 5x) | weight read GB/s HF / engine / copy | llama.cpp |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in settings:
        llama = r.get("llamacpp_batch1_tok_s")
        print(f"| {name} ({r['isa']}) | {r['engine_dtype']} | {r['hf_batch1_tok_s']:.1f} | "
              f"{r['engine_batch1_tok_s']:.1f} | {r['engine_batch1_tok_s_vs_hf_batch1']:.2f}x | "
              f"{r['engine_c16_tok_s']:.1f} | {r['engine_c16_vs_engine_batch1']:.1f}x | "
              f"{r['hf_batch1_weight_read_gbs']:.1f} / {r['engine_batch1_weight_read_gbs']:.1f} / "
              f"{r['copy_bandwidth_gbs']:.1f} | {'' if llama is None else f'{llama:.1f}'} |")
    print(json.dumps({name: r for name, r in settings}))


def kv_bytes_per_token(model) -> int:
    from mosslm.engine.kv_cache import SlotKV

    return SlotKV.bytes_per_token(model.config) * next(model.parameters()).element_size()


if __name__ == "__main__":
    main()
