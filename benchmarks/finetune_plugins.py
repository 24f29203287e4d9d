"""A real pretrained model learns the MOSS plugins: LoRA on SmolLM2-135M-Instruct (the GGUF base), on a CPU.

    python benchmarks/finetune_plugins.py --out DIR [--steps N] [--base FILE.gguf]

1. generates the plugins corpus (`moss data synth --recipe plugins`) and its held-out eval set;
2. "before": the base with the MOSS tokens added and nothing trained, scored by the same eval;
3. `moss finetune`'s loop: LoRA r=16 on every projection plus the protocol tokens' embedding rows;
4. merges the adapter into DIR/model (plugins recorded in mosslm.json: `moss chat --model DIR/model` calls them)
   and scores it on held-out arithmetic and handbook questions (unseen numbers and phrasings), and on plain
   factual questions that the base answered right, asked with the plugins on as `moss chat` would.
Prints the numbers and writes DIR/results.json. The whole fine-tune's wall time is printed next to them.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mosslm import model as modellib  # noqa: E402
from mosslm.data.synth import generate_corpus  # noqa: E402
from mosslm.eval import quick  # noqa: E402
from mosslm.train import lora  # noqa: E402
from mosslm.train.config import TrainConfig  # noqa: E402
from mosslm.train.loop import read_metrics, train  # noqa: E402

PLUGINS = ["Search", "Calculate", "Solve"]
FACTS = Path(__file__).with_name("plain_facts.jsonl")


def base_path(given: str | None) -> str:
    if given:
        return given
    from mosslm.download import KNOWN
    path = KNOWN["smollm2"].path
    if not path.exists():
        sys.exit(f"no base model at {path}: run `moss download smollm2` first (or pass --base)")
    return str(path)


def eval_subset(eval_path: Path, out: Path, per_task: dict[str, int]) -> Path:
    items, seen = [], {}
    for line in eval_path.read_text(encoding="utf-8").splitlines():
        item = json.loads(line)
        if seen.get(item["task"], 0) < per_task.get(item["task"], 0):
            seen[item["task"]] = seen.get(item["task"], 0) + 1
            items.append(line)
    out.write_text("\n".join(items) + "\n", encoding="utf-8")
    return out


def untrained_checkpoint(base: str, out: Path) -> Path:
    """The base as the eval sees it before any training: the MOSS tokens added, the plugins enabled."""
    model, tokenizer = lora.load_base(base)
    lora.add_protocol_tokens(model, tokenizer)
    return modellib.save_checkpoint(model, tokenizer, out, preset="mosslm", metadata={"plugins": PLUGINS})


@torch.no_grad()
def base_answers(base: str, questions: list[str]) -> list[str]:
    """The base's own replies through its own chat template (greedy)."""
    loaded = modellib.load(base)
    tok, model = loaded.tokenizer, loaded.model
    replies = []
    for q in questions:
        ids = tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)["input_ids"]
        out = model.generate(ids, max_new_tokens=48, do_sample=False, pad_token_id=tok.eos_token_id)
        replies.append(tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
    return replies


def tuned_answers(model_dir: Path, questions: list[str]) -> list[tuple[str, str | None]]:
    """The fine-tuned model's replies with the plugins on, as `moss chat --model DIR` answers."""
    agent = quick.eval_agent(model_dir, max_new_tokens=96)
    replies = []
    for q in questions:
        agent.clear()
        for _ in agent.send(q):
            pass
        turn = agent.history.turns[-1]
        replies.append((turn.reply or "", turn.commands))
    return replies


def holds(reply: str, expected: list[str]) -> bool:
    return any(e.lower() in reply.lower() for e in expected)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--base", help="the base model (default: the SmolLM2 GGUF of `moss download smollm2`)")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=640)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--arithmetic", type=int, default=60, help="held-out arithmetic questions scored")
    ap.add_argument("--search", type=int, default=60, help="held-out handbook questions scored")
    ap.add_argument("--before", type=int, default=20, help="items per task scored before fine-tuning")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = base_path(args.base)
    results: dict = {"base": base, "args": vars(args)}

    data = out / "data"
    if not (data / "manifest.json").exists():
        generate_corpus(data, seed=args.seed, recipe="plugins")
    # One pass over a random sample of the corpus: as many conversations as the run has room for.
    lines = (data / "sft_train.jsonl").read_text(encoding="utf-8").splitlines()
    random.Random(args.seed).shuffle(lines)
    train_file = out / "train.jsonl"
    train_file.write_text("\n".join(lines[: args.steps * args.batch]) + "\n", encoding="utf-8")
    after_items = eval_subset(data / "eval.jsonl", out / "eval_after.jsonl",
                              {"arithmetic": args.arithmetic, "search": args.search})
    before_items = eval_subset(data / "eval.jsonl", out / "eval_before.jsonl",
                               {"arithmetic": args.before, "search": args.before})

    facts = [json.loads(line) for line in FACTS.read_text(encoding="utf-8").splitlines() if line.strip()]
    print("== base: plain factual questions (its own chat template)", flush=True)
    base_replies = base_answers(base, [f["question"] for f in facts])
    known = [f for f, r in zip(facts, base_replies) if holds(r, f["expected"])][:10]
    results["base_knows"] = [f["question"] for f in known]

    print("== before fine-tuning: the same eval", flush=True)
    before_dir = untrained_checkpoint(base, out / "before")
    results["before"] = quick.run(before_dir, before_items, max_new_tokens=64)["metrics"]

    print("== LoRA fine-tune", flush=True)
    cfg = TrainConfig(stage="sft", init=base, out=str(out / "run"), train=[str(train_file)], lora_r=args.rank,
                      lora_alpha=2 * args.rank, add_protocol_tokens=True, plugins=PLUGINS, seq_len=args.seq_len,
                      batch_size=args.batch, micro_batch_size=args.batch // 2, max_steps=args.steps, lr=args.lr,
                      warmup_steps=10, weight_decay=0.0, save_every=50, log_every=10, seed=args.seed)
    cfg.validate()
    started = time.time()
    adapter = train(cfg, resume=True)
    merged = lora.merge(adapter, out / "model")
    results["finetune_seconds"] = round(time.time() - started, 1)
    rows = read_metrics(out / "run" / "metrics.jsonl")
    results["loss"] = {"first": rows[0]["loss"], "last": rows[-1]["loss"]}

    print("== after fine-tuning: held-out questions", flush=True)
    results["after"] = quick.run(merged, after_items, max_new_tokens=96)["metrics"]
    tuned = tuned_answers(merged, [f["question"] for f in known])
    results["knowledge"] = [{"question": f["question"], "reply": r, "commands": c, "ok": holds(r, f["expected"])}
                            for f, (r, c) in zip(known, tuned)]
    kept = sum(k["ok"] for k in results["knowledge"])

    a, b = results["after"], results["before"]
    print(f"\nbase: {base}\nfine-tune: {cfg.max_steps} steps x {cfg.batch_size} conversations, "
          f"{results['finetune_seconds'] / 60:.1f} min (loss {rows[0]['loss']:.3f} -> {rows[-1]['loss']:.3f})")
    print("| held-out | before | after | target |\n|---|---|---|---|")
    for task, metric, target in (("arithmetic", "calculate_well_formed", ">= 90%"),
                                 ("arithmetic", "answer_correct", ">= 85%"),
                                 ("search", "search_well_formed", ">= 80% (Search chosen)"),
                                 ("search", "answer_correct", ">= 60% (fact from the results)")):
        print(f"| {task} {metric} | {b.get(task, {}).get(metric, 0):.1%} | {a[task][metric]:.1%} | {target} |")
    search_chosen = results["search_chosen"] = _search_chosen(merged, after_items)
    print(f"| search: a Search command at all | | {search_chosen:.1%} | |")
    print(f"| plain facts the base knew, still answered | | {kept}/{len(known)} | >= 8/10 |")
    (out / "results.json").write_text(json.dumps(results, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    print(f"merged model: {merged} (try: moss chat --model {merged})")
    return 0


def _search_chosen(model_dir: Path, items_path: Path) -> float:
    """Share of handbook questions answered with a Search command (any query)."""
    from mosslm import protocol
    items = [i for i in quick.load_items(items_path) if i["task"] == "search"][:20]
    agent = quick.eval_agent(model_dir, max_new_tokens=48)
    chosen = 0
    for item in items:
        agent.clear()
        for _ in agent.send(item["question"]):
            pass
        parsed = protocol.parse_commands(agent.history.turns[-1].commands or "")
        chosen += bool(parsed) and all(c.name == "Search" for c in parsed)
    return chosen / max(1, len(items))


if __name__ == "__main__":
    raise SystemExit(main())
