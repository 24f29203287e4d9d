"""Quantized CPU inference: fp32, bf16, int8 and int4 on our engine against llama.cpp, in one run.

    python benchmarks/quant.py --out DIR [--models smollm2,small] [--new-tokens 64] [--peers PEERS_DIR]

For each model (SmolLM2-135M-Instruct from `moss download smollm2`, and the 34M `small` preset with
random weights and a tokenizer trained here), in this process and at this machine's thread count:
1. writes its fp32 folder, `moss quantize` int8 and int4 copies (int8 in its default groups of 64, int4 in groups of 32,
   Q4_0's block), and `moss export --format gguf`
   f16, Q8_0 and Q4_0 files (the same weights for everyone);
2. for fp32, bf16, int8 and int4 on our engine: weight memory, batch-1 decode tokens/s, aggregate
   tokens/s at 16 streams (end to end, prefill included, and decoding alone: the tokens made while all 16
   stream, as the batch-1 rates leave prefill out), and perplexity on mosslm/resources/eval/bpb.txt
   (English and Chinese);
3. llama.cpp on the Q8_0 and Q4_0 files, two ways: llama-cpp-python (batch-1 decode, the same prompts as
   token ids, greedy; run before our runs and after them, the faster counting) and C++
   `llama-bench -t THREADS -n NEW` (tg), when the peers are built (scripts/build_llama_peers.sh puts both
   in PEERS_DIR);
4. each run's share of the memory-bandwidth limit: the weight bytes a decode step reads, times tokens/s,
   over a copy bandwidth measured in the same run (read + write, as `moss env` reports it);
5. the GGUF round trip: llama-cpp-python's greedy tokens on the f16 and Q8_0 files against our engine's
   on the fp32 and int8 folders, 32 tokens from the same prompt.
The ratios the issue names are printed against llama-cpp-python, each marked met or NOT met; the
llama-bench ratios as measured.
The last line is JSON with every figure (also in DIR/quant.json).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from engine import prompt_text  # noqa: E402  (benchmarks/engine.py: the MOSS meta instruction + a message)

from mosslm import model as modellib  # noqa: E402
from mosslm import quant  # noqa: E402
from mosslm.engine import SamplingParams  # noqa: E402
from mosslm.engine.engine import Engine, EngineConfig  # noqa: E402
from mosslm.hardware import copy_bandwidth_gbs  # noqa: E402
from mosslm.quant.gguf_export import export as export_gguf  # noqa: E402
from mosslm.quant.linear import QuantLinear  # noqa: E402

TEXT = ROOT / "mosslm" / "resources" / "eval" / "bpb.txt"  # also the text of `moss eval --tasks bpb`
PEERS = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mosslm" / "peers"

LLAMA_CPP_SCRIPT = r"""
import json, statistics, sys, time
from llama_cpp import Llama
cfg = json.load(sys.stdin)
llm = Llama(model_path=cfg["gguf"], n_ctx=2048, n_threads=cfg["threads"], n_threads_batch=cfg["threads"],
            verbose=False)
rates, first = [], None
for ids in cfg["prompts"]:
    times, tokens = [], []
    for t in llm.generate(ids, temp=0.0, repeat_penalty=1.0, reset=True):
        times.append(time.perf_counter()); tokens.append(t)
        if len(tokens) == cfg["new"]:
            break
    rates.append((len(times) - 1) / (times[-1] - times[0]))
    first = first or tokens
print(json.dumps({"decode_tok_s": statistics.median(rates), "greedy": first}))
"""


def prepare_models(name: str, out: Path) -> tuple[Path, object]:
    """(fp32 folder, tokenizer) of one benchmark model."""
    folder = out / name / "fp32"
    if (folder / "config.json").exists():
        return folder, modellib.load(folder).tokenizer
    if name == "smollm2":
        from mosslm.download import KNOWN
        gguf = KNOWN["smollm2"].path
        if not gguf.exists():
            sys.exit(f"no SmolLM2 at {gguf}: run `moss download smollm2` first")
        loaded = modellib.load(gguf)
        model, tok = loaded.model, loaded.tokenizer
    else:  # a preset with random weights, and a tokenizer trained on the project's own generated text
        from mosslm.data import synth
        from mosslm.tokenizer import train_tokenizer
        data = out / name / "corpus"
        if not (data / "manifest.json").exists():
            synth.generate_corpus(data, seed=0, recipe="plugins")
        texts = [json.loads(line)["text"] for line in (data / "pretrain.jsonl").read_text(encoding="utf-8").splitlines()]
        tok = train_tokenizer(texts + [TEXT.read_text(encoding="utf-8")], vocab_size=8192)
        model = modellib.build_model(name, tok, seed=0)
    folder.parent.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder, tok


def perplexity(model, tok, window: int = 512) -> float:
    ids = tok.encode(TEXT.read_text(encoding="utf-8"), add_special_tokens=False)
    nll, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(ids) - 1, window):
            chunk = torch.tensor([ids[start:start + window + 1]])
            logits = model(chunk[:, :-1]).logits.float()
            nll += torch.nn.functional.cross_entropy(logits[0], chunk[0, 1:], reduction="sum").item()
            count += chunk.shape[1] - 1
    return math.exp(nll / count)


def perplexity_through_the_kernel(model, tok) -> float:
    """Perplexity with every row through mosslm's int8-activation kernels, as decode computes (the plain
    figure runs 512-row windows, which convert weights to the activation dtype instead: more rows than
    linear.kernel_row_limit())."""
    from mosslm.quant import linear as quant_linear

    kept = quant_linear.Q4_KERNEL_ROWS
    quant_linear.Q4_KERNEL_ROWS = 1 << 30
    try:
        return perplexity(model, tok)
    finally:
        quant_linear.Q4_KERNEL_ROWS = kept


def bytes_per_token(model) -> int:
    """Weight bytes one decode step reads: everything but the embedding table, unless the head is tied to it."""
    total = quant.weight_bytes(model)
    embed, head = model.get_input_embeddings(), model.get_output_embeddings()
    tied = getattr(head, "weight", None) is embed.weight
    return total if tied else total - embed.weight.numel() * embed.weight.element_size()


def engine_figures(model, tok, prompts: list[list[int]], new: int) -> dict:
    cfg = EngineConfig(max_running=16, max_waiting=32, max_seq_len=1024, kv_budget_mb=512)
    engine = Engine(model, tok, cfg)
    params = SamplingParams(max_new_tokens=new, temperature=0.0)
    try:
        engine.submit(prompts[0], SamplingParams(max_new_tokens=4, temperature=0.0)).wait(120)  # warm-up
        rates, greedy = [], None
        for p in prompts[:3]:
            h = engine.submit(p, params)
            h.wait(600)
            t = h.token_times
            rates.append((len(t) - 1) / (t[-1] - t[0]))
            greedy = greedy or h.result.token_ids
        streams = [prompts[i % len(prompts)] + [prompts[0][-1]] * (i // len(prompts)) for i in range(16)]
        started = time.perf_counter()
        handles = [engine.submit(p, params) for p in streams]
        tokens = sum(len(h.wait(600).token_ids) for h in handles)
        aggregate = tokens / (time.perf_counter() - started)
        # decode alone, as the batch-1 rates are measured: from the moment every stream has its first token
        # to the moment the first one ends, the tokens all 16 made in between
        first, last = max(h.token_times[0] for h in handles), min(h.token_times[-1] for h in handles)
        between = sum(sum(1 for t in h.token_times if first < t <= last) for h in handles)
        decode = between / (last - first) if last > first else float("nan")
    finally:
        engine.shutdown()
    return {"batch1_tok_s": statistics.median(rates), "c16_tok_s": aggregate, "c16_decode_tok_s": decode,
            "greedy": greedy}


def llama_cpp_python(peers: Path, gguf: Path, prompts: list[list[int]], new: int, threads: int) -> dict | None:
    python = peers / "venv" / "bin" / "python"
    if not python.exists():
        return None
    cfg = {"gguf": str(gguf), "prompts": prompts[:3], "new": new, "threads": threads}
    run = subprocess.run([str(python), "-c", LLAMA_CPP_SCRIPT], input=json.dumps(cfg), capture_output=True,
                         text=True, timeout=900)
    if run.returncode:
        print(f"llama-cpp-python failed on {gguf.name}: {run.stderr[-500:]}", file=sys.stderr)
        return None
    return json.loads(run.stdout.strip().splitlines()[-1])


def llama_bench(peers: Path, gguf: Path, new: int, threads: int) -> float | None:
    binary = peers / "bin" / "llama-bench"
    if not binary.exists():
        return None
    run = subprocess.run([str(binary), "-m", str(gguf), "-t", str(threads), "-p", "0", "-n", str(new), "-r", "3",
                          "-o", "json"], capture_output=True, text=True, timeout=900)
    if run.returncode:
        print(f"llama-bench failed on {gguf.name}: {run.stderr[-500:]}", file=sys.stderr)
        return None
    rows = json.loads(run.stdout)
    return float(rows[0]["avg_ts"])


def gguf_bytes(path: Path) -> int:
    import gguf
    return sum(int(t.n_bytes) for t in gguf.GGUFReader(str(path)).tensors)


def bench_model(name: str, out: Path, peers: Path, new: int, bandwidth: float) -> dict:
    threads = torch.get_num_threads()
    source, tok = prepare_models(name, out)
    folders = {"fp32": source, "bf16": source}
    for bits in (8, 4):
        folder = out / name / f"int{bits}"
        if not (folder / "quantized.safetensors").exists():
            quant.quantize(str(source), str(folder), bits, 32 if bits == 4 else None)  # Q4_0's block of 32
        folders[f"int{bits}"] = folder
    ggufs = {}
    for q in ("f16", "q8_0", "q4_0"):
        path = out / name / "gguf" / f"{name}-{q}.gguf"
        if not path.exists():
            export_gguf(str(source), str(path), q, modelfile=False)
        ggufs[q] = path
    prompts = [tok.encode(prompt_text(i), add_special_tokens=False) for i in range(8)]
    res: dict = {"threads": threads, "prompt_tokens": len(prompts[0]), "new_tokens": new, "runs": {}}
    # llama-cpp-python runs once before our runs and once after; the faster of the two counts, so a machine
    # whose speed drifts during the run (shared hosts do, by 20% and more) does not tilt a ratio our way
    before = {q: llama_cpp_python(peers, ggufs[q], prompts, new, threads) for q in ("q8_0", "q4_0")}
    for kind, folder in folders.items():
        dtype = "bf16" if kind == "bf16" else ("fp32" if kind == "fp32" else activation_dtype())
        loaded = modellib.load(folder, dtype=dtype)
        model = loaded.model
        kernels = sorted({m._kernel for m in model.modules() if isinstance(m, QuantLinear)})
        row = {"activations": dtype, "kernel": ",".join(kernels) or "torch", "weight_mb": quant.weight_bytes(model) / 2**20,
               "bytes_per_token_mb": bytes_per_token(model) / 2**20, "ppl": perplexity(model, tok)}
        if row["kernel"] in ("q4own", "q8own"):
            # the C++ decode step runs every layer in fp32 whatever the model's dtype: the decode figure is the
            # fp32 model through the kernels; the model's own dtype through them is what short prefill chunks run
            fp32_model = model if dtype == "fp32" else modellib.load(folder, dtype="fp32").model
            row["ppl_kernel"] = perplexity_through_the_kernel(fp32_model, tok)
            if dtype != "fp32":
                row["ppl_kernel_model_dtype"] = perplexity_through_the_kernel(model, tok)
        row.update(engine_figures(model, tok, prompts, new))
        row["bandwidth_share"] = row["bytes_per_token_mb"] * 2**20 * row["batch1_tok_s"] / (bandwidth * 1e9)
        res["runs"][kind] = row
        print(f"{name} {kind}: {row['weight_mb']:.0f} MB, batch 1 {row['batch1_tok_s']:.1f} tok/s, "
              f"16 streams {row['c16_tok_s']:.1f} tok/s ({decoding(row)} decoding), ppl {row['ppl']:.3f}",
              file=sys.stderr, flush=True)
        del loaded, model
    for q in ("q8_0", "q4_0", "f16"):
        row = {"file_mb": ggufs[q].stat().st_size / 2**20, "bytes_per_token_mb": gguf_bytes(ggufs[q]) / 2**20}
        lcp = llama_cpp_python(peers, ggufs[q], prompts, new, threads)
        earlier = before.get(q)
        row["python_tok_s_runs"] = [x["decode_tok_s"] for x in (earlier, lcp) if x]
        row["python_tok_s"] = max(row["python_tok_s_runs"], default=None)
        row["greedy"] = lcp and lcp["greedy"]
        row["bench_tok_s"] = llama_bench(peers, ggufs[q], new, threads) if q != "f16" else None
        for key in ("python_tok_s", "bench_tok_s"):
            if row[key]:
                row[key.replace("tok_s", "bandwidth_share")] = row["bytes_per_token_mb"] * 2**20 * row[key] / (bandwidth * 1e9)
        res["runs"][f"llama.cpp {q}"] = row
        print(f"{name} llama.cpp {q}: python {row['python_tok_s']}, llama-bench {row['bench_tok_s']}",
              file=sys.stderr, flush=True)
    return res


def activation_dtype() -> str:
    """What the int kernels compute in: bf16 where `dtype auto` takes it on this CPU, else fp32."""
    from mosslm.hardware import Workload, choose_dtype
    from transformers import LlamaConfig
    return choose_dtype("auto", "cpu", Workload.decoding(LlamaConfig())).dtype


def decoding(run: dict) -> str:
    rate = run["c16_decode_tok_s"]  # NaN: the KV budget never held all 16 at once (fp32 caches are wide)
    return f"{rate:.1f}" if rate == rate else "never 16 at once"


def report(name: str, res: dict, bandwidth: float) -> None:
    runs = res["runs"]
    print(f"\n## {name}: {res['threads']} threads, {res['prompt_tokens']}-token prompts, {res['new_tokens']} new "
          f"tokens, greedy; copy bandwidth {bandwidth:.1f} GB/s")
    print("| run | weights MB | batch-1 tok/s | 16 streams tok/s (decoding) | ppl | bandwidth share |\n"
          "|---|---|---|---|---|---|")
    for kind in ("fp32", "bf16", "int8", "int4"):
        r = runs[kind]
        into = ", int8 into the linears" if r.get("kernel") in ("q4own", "q8own") else ""
        print(f"| ours {kind} ({r['activations']} activations{into}) | {r['weight_mb']:.0f} | {r['batch1_tok_s']:.1f} | "
              f"{r['c16_tok_s']:.1f} ({decoding(r)}) | {r['ppl']:.3f} | {r['bandwidth_share']:.0%} |")
    for q in ("q8_0", "q4_0"):
        r = runs[f"llama.cpp {q}"]
        for way, key in (("llama-cpp-python", "python"), ("llama-bench", "bench")):
            rate = r.get(f"{key}_tok_s")
            share = r.get(f"{key}_bandwidth_share")
            runs_note = (" (runs: " + ", ".join(f"{x:.1f}" for x in r["python_tok_s_runs"]) + ")"
                         if key == "python" and len(r.get("python_tok_s_runs", [])) > 1 else "")
            print(f"| {way} {q} | {r['file_mb']:.0f} | {rate:.1f}{runs_note} | | | {share:.0%} |" if rate else
                  f"| {way} {q} | {r['file_mb']:.0f} | not installed | | | |")
    fp32_ppl = runs["fp32"]["ppl"]
    within = 0.01
    checks = [("int8 ppl vs fp32", runs["int8"]["ppl"] / fp32_ppl - 1, True),
              ("int4 ppl vs fp32", runs["int4"]["ppl"] / fp32_ppl - 1, False)]
    for kind, target in (("int8", True), ("int4", False)):
        if "ppl_kernel" in runs[kind]:
            checks.append((f"{kind} ppl vs fp32, every row through the int8-activation kernel (fp32 layers, as "
                           f"the C++ decode step)", runs[kind]["ppl_kernel"] / fp32_ppl - 1, target))
        if "ppl_kernel_model_dtype" in runs[kind]:
            checks.append((f"{kind} ppl vs fp32, every row through the kernel in {runs[kind]['activations']} layers "
                           f"(short prefill chunks)", runs[kind]["ppl_kernel_model_dtype"] / fp32_ppl - 1, False))
    res["checks"] = {}
    for label, value, target in checks:
        verdict = (("met" if abs(value) <= within else "NOT met") + " (target: within 1%)") if target else "as measured"
        print(f"{label}: {value:+.2%}, {verdict}")
        if target:
            res["checks"][label] = abs(value) <= within
    q8, q4 = runs["llama.cpp q8_0"], runs["llama.cpp q4_0"]
    ratios = {}
    if q8.get("python_tok_s"):
        ratios["int8 / llama-cpp-python q8_0"] = (runs["int8"]["batch1_tok_s"] / q8["python_tok_s"], ">= 1.0x")
    if q4.get("python_tok_s"):
        ratios["int4 / llama-cpp-python q4_0"] = (runs["int4"]["batch1_tok_s"] / q4["python_tok_s"], ">= 0.8x")
        ratios["int4 16 streams decoding / llama-cpp-python q4_0 batch 1"] = (
            runs["int4"]["c16_decode_tok_s"] / q4["python_tok_s"], ">= 2x")
        ratios["int4 16 streams end to end (prefill in) / llama-cpp-python q4_0 batch 1"] = (
            runs["int4"]["c16_tok_s"] / q4["python_tok_s"], ">= 2x")
    if q8.get("bench_tok_s"):
        ratios["int8 / llama-bench q8_0"] = (runs["int8"]["batch1_tok_s"] / q8["bench_tok_s"], "as measured")
    if q4.get("bench_tok_s"):
        ratios["int4 / llama-bench q4_0"] = (runs["int4"]["batch1_tok_s"] / q4["bench_tok_s"], "as measured")
    for label, (value, target) in ratios.items():
        if target.startswith(">= "):
            floor = float(target[3:].rstrip("x"))
            verdict = f"{'met' if value >= floor else 'NOT met'} (target {target})"
            res["checks"][label] = value >= floor
        else:
            verdict = target
        print(f"{label}: {value:.2f}x, {verdict}")
    res["ratios"] = {k: v for k, (v, _) in ratios.items()}
    # the file against the model it was exported from, and Q8_0 also against our own int8 (whose weights
    # have a scale per 64 inputs, not per 32, and whose kernel rounds activations to int8 as llama.cpp's does)
    for q, ours in (("f16", "fp32"), ("q8_0", "fp32"), ("q8_0", "int8")):
        theirs = runs[f"llama.cpp {q}"].get("greedy")
        if theirs:
            mine = runs[ours]["greedy"][:32]
            same = next((i for i, (a, b) in enumerate(zip(mine, theirs[:32])) if a != b), min(len(mine), 32))
            res[f"greedy_{q}_vs_{ours}_same_tokens"] = same
            print(f"GGUF {q} in llama-cpp-python vs our {ours}: first {same} of 32 greedy tokens equal")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder for the models, GGUF files and quant.json")
    ap.add_argument("--models", default="smollm2,small", help="smollm2 and/or preset names (default smollm2,small)")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--peers", default=str(PEERS), help="scripts/build_llama_peers.sh's PEERS_DIR")
    args = ap.parse_args()
    out, peers = Path(args.out), Path(args.peers)
    out.mkdir(parents=True, exist_ok=True)
    bandwidth = copy_bandwidth_gbs()
    from mosslm.quant import q4_kernel
    results = {"copy_bandwidth_gbs": bandwidth, "isa": torch.backends.cpu.get_cpu_capability(),
               "kernel_isa": q4_kernel.isa(), "kernel_unavailable": q4_kernel.reason(), "models": {}}
    print(f"mosslm's kernels: {q4_kernel.isa() or 'not used: ' + str(q4_kernel.reason())}", file=sys.stderr)
    for name in args.models.split(","):
        results["models"][name] = bench_model(name, out, peers, args.new_tokens, bandwidth)
    for name, res in results["models"].items():
        report(name, res, bandwidth)
    results["copy_bandwidth_after_gbs"] = copy_bandwidth_gbs()
    print(f"copy bandwidth before / after: {bandwidth:.1f} / {results['copy_bandwidth_after_gbs']:.1f} GB/s")
    for res in results["models"].values():
        for r in res["runs"].values():
            r.pop("greedy", None)
    (out / "quant.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
