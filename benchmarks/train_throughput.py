"""Training throughput and MFU: mosslm's loop against the HF Trainer, same model and data.

    python benchmarks/train_throughput.py [--preset small] [--steps 12] [--isa both]

Measures, in one run:
- the machine's peak: a large matmul in fp32 and in bf16;
- mosslm's training loop at fp32, at bf16 (autocast), at bf16 + torch.compile;
- transformers' Trainer on the same model config, the same token rows, the
  same batch size (fp32, and bf16 where it supports it on this device).
It prints tokens/s, MFU (6 * params * tokens/s plus attention, over the
measured peak of that precision) and each run's ratio to the Trainer baseline,
and what `dtype: auto` picks at this model's shapes.

`--isa both` (the default on an AVX-512 CPU) measures on this CPU as it is and
again with the kernels capped at AVX2 (benchmarks/isa.py). Where the CPU has no
native bf16, the bf16 runs are cut to --slow-steps steps (each takes many
seconds) and the Trainer's bf16 and compile runs are left out: they only repeat
the same slow kernels.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import isa  # noqa: E402  (benchmarks/isa.py)
from mosslm import hardware  # noqa: E402

from mosslm.model import build_model, count_parameters, model_config  # noqa: E402
from mosslm.tokenizer import train_tokenizer  # noqa: E402
from mosslm.train.config import TrainConfig  # noqa: E402
from mosslm.train.loop import read_metrics, train  # noqa: E402


def peak_flops(dtype: torch.dtype, n: int = 2048, seconds: float = 2.0) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return 2 * n ** 3 * count / (time.perf_counter() - start)


def flops_per_token(params: int, cfg, seq_len: int) -> float:
    # 6N for the weights, plus attention scores and values (forward + backward).
    return 6 * params + 12 * cfg.num_hidden_layers * cfg.hidden_size * seq_len


def make_data(folder: Path, vocab: int, rows: int, seq_len: int):
    """A real tokenizer and packed rows of generated bilingual text."""
    from mosslm.data.synth import generate_corpus

    generate_corpus(folder / "data", seed=0, scale=0.3)
    texts = [json.loads(l)["text"] for l in (folder / "data" / "pretrain.jsonl").read_text().splitlines()]
    tok = train_tokenizer(texts, vocab_size=vocab)
    tok.save_pretrained(folder / "tok")
    return tok, folder / "data" / "pretrain.jsonl"


def run_mosslm(folder: Path, data: Path, preset: str, seq_len: int, batch: int, steps: int,
               dtype: str, compile_: bool) -> float:
    out = folder / f"run-{dtype}-{compile_}"
    cfg = TrainConfig(stage="pretrain", out=str(out), tokenizer=str(folder / "tok"), preset=preset,
                      train=[str(data)], seq_len=seq_len, batch_size=batch, micro_batch_size=batch,
                      max_steps=steps, warmup_steps=2, log_every=1, eval_every=10 ** 9, save_every=10 ** 9,
                      dtype=dtype, compile=compile_, progress=False)
    train(cfg)
    rows = read_metrics(out / "metrics.jsonl")
    measured = [r["tokens_per_s"] for r in rows[len(rows) // 2:]]  # skip warm-up and compilation
    return len(measured) / sum(1 / x for x in measured)  # harmonic mean: total tokens over total time


def run_hf_trainer(folder: Path, tok, data: Path, preset: str, seq_len: int, batch: int, steps: int,
                   bf16: bool) -> float:
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from mosslm.train.data import pack_texts

    rows = pack_texts([str(data)], tok, seq_len)

    class Rows(torch.utils.data.Dataset):
        def __len__(self):
            return len(rows)

        def __getitem__(self, i):
            return {"input_ids": rows[i], "labels": rows[i]}

    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter())

    model = build_model(preset, tok, max_position_embeddings=max(1024, seq_len + 1))
    args = TrainingArguments(output_dir=str(folder / "hf"), per_device_train_batch_size=batch, max_steps=steps,
                             learning_rate=1e-3, warmup_steps=2, lr_scheduler_type="cosine", weight_decay=0.1,
                             bf16=bf16, use_cpu=True, save_strategy="no", report_to=[], logging_steps=10 ** 9,
                             dataloader_num_workers=0, disable_tqdm=True, optim="adamw_torch_fused")
    Trainer(model=model, args=args, train_dataset=Rows(), callbacks=[Clock()]).train()
    half = len(times) // 2
    return (len(times) - 1 - half) * batch * (seq_len + 1) / (times[-1] - times[half])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="small", help="model preset (small = the 34M model)")
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--slow-steps", type=int, default=2, help="steps of a bf16 run without native bf16")
    isa.add_argument(ap)
    args = ap.parse_args()
    settings = isa.run_settings(args)
    if settings is not None:
        return summarize(settings)
    torch.manual_seed(0)
    native, label = hardware.native_bf16()
    print(f"setting {isa.setting()}: torch ISA {hardware.isa_level()}, native bf16 {'yes' if native else 'no'} "
          f"({label}); threads: {torch.get_num_threads()}, torch {torch.__version__}")
    # Without native bf16 a 2048^3 bf16 matmul takes ~15 s: a smaller one measures the same slow kernel.
    peaks = {"fp32": peak_flops(torch.float32), "bf16": peak_flops(torch.bfloat16, n=2048 if native else 512)}
    print(f"measured peak (large matmul): fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s, "
          f"bf16 {peaks['bf16'] / 1e9:.1f} GFLOP/s")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        tok, data = make_data(folder, args.vocab, 0, args.seq_len)
        cfg = model_config(args.preset, vocab_size=len(tok))
        params = count_parameters(cfg)
        fpt = flops_per_token(params, cfg, args.seq_len)
        choice = hardware.choose_dtype("auto", "cpu", hardware.Workload.training(args.batch * args.seq_len, args.seq_len, cfg))
        print(f"model: preset {args.preset}, {params / 1e6:.1f}M parameters, seq_len {args.seq_len}, "
              f"batch {args.batch}, {args.steps} steps per run (second half timed)\n{choice.line()}\n")
        results = []
        hf32 = run_hf_trainer(folder, tok, data, args.preset, args.seq_len, args.batch, args.steps, bf16=False)
        results.append(("HF Trainer fp32 (baseline)", hf32, "fp32"))
        if native:
            try:
                results.append(("HF Trainer bf16", run_hf_trainer(folder, tok, data, args.preset, args.seq_len,
                                                                  args.batch, args.steps, bf16=True), "bf16"))
            except Exception as e:  # some transformers builds refuse bf16 on CPU
                print(f"HF Trainer bf16 unavailable here: {e}")
        runs = [("mosslm fp32", "fp32", False, args.steps), ("mosslm bf16", "bf16", False,
                                                               args.steps if native else args.slow_steps)]
        if native:
            runs.append(("mosslm bf16 + compile", "bf16", True, args.steps))
        for label, dtype, comp, steps in runs:
            results.append((label, run_mosslm(folder, data, args.preset, args.seq_len, args.batch,
                                              steps, dtype, comp), dtype))
    print(f"{'run':<28}{'tokens/s':>10}{'MFU':>8}{'vs HF fp32':>12}")
    for label, tps, dtype in results:
        # Without native bf16 the bf16 runs take a slow fallback that no matmul peak describes.
        mfu = f"{tps * fpt / peaks[dtype]:>8.1%}" if native or dtype == "fp32" else f"{'-':>8}"
        print(f"{label:<28}{tps:>10.0f}{mfu}{tps / hf32:>11.2f}x")
    best_hf = max(t for l, t, _ in results if l.startswith("HF"))
    best_ours = max(t for l, t, _ in results if l.startswith("mosslm"))
    auto = next(t for l, t, d in results if l == f"mosslm {choice.dtype}")
    print(f"\nbest mosslm / HF Trainer default (fp32): {best_ours / hf32:.2f}x (target >= 1.3x)")
    print(f"best mosslm / best HF Trainer (incl. its bf16 mode): {best_ours / best_hf:.2f}x")
    print(f"mosslm with dtype auto ({choice.dtype}): {auto:.0f} tokens/s, {auto / hf32:.2f}x HF fp32; "
          f"fp32 / bf16 here: {results_by(results, 'mosslm fp32') / results_by(results, 'mosslm bf16'):.2f}x")
    print(json.dumps({"setting": isa.setting(), "isa": hardware.isa_level(), "native_bf16": native,
                      "dtype_choice": choice.line(), "auto_tokens_per_s": auto, "hf_fp32_tokens_per_s": hf32,
                      "peaks_gflops": {k: v / 1e9 for k, v in peaks.items()},
                      "runs": {label: tps for label, tps, _ in results}}))


def results_by(results, label: str) -> float:
    return next(t for l, t, _ in results if l == label)


def summarize(settings: list[tuple[str, dict]]) -> None:
    print("\n| setting | peak fp32 / bf16 GFLOP/s | mosslm fp32 | mosslm bf16 | dtype auto picks | auto vs HF fp32 |")
    print("|---|---|---|---|---|---|")
    for name, r in settings:
        p, runs = r["peaks_gflops"], r["runs"]
        print(f"| {name} ({r['isa']}) | {p['fp32']:.0f} / {p['bf16']:.0f} | {runs['mosslm fp32']:.0f} tok/s | "
              f"{runs['mosslm bf16']:.0f} tok/s | {r['dtype_choice'].split(':')[0].removeprefix('dtype auto -> ')} | "
              f"{r['auto_tokens_per_s'] / r['hf_fp32_tokens_per_s']:.2f}x |")
    print(json.dumps({name: r for name, r in settings}))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
