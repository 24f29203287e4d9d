"""`moss speedrun`: the whole road in one command.

corpus -> tokenizer -> pretrain -> sft -> quick eval -> report.md, then the
final checkpoint becomes the default model of `moss chat` / `moss serve`.
Each stage is the same code the individual verbs run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import yaml

from .paths import atomic_dir, default_model_dir

CONFIG_DIR = Path(__file__).parent / "configs"


def _cpu_line() -> str:
    from .hardware import cpu_info, isa_level, native_bf16

    native, label = native_bf16()
    return (f"{cpu_info()['model']}, {os.cpu_count()} cores, torch ISA {isa_level()}, "
            f"native bf16 {'yes' if native else 'no'} ({label})")


def speedrun_config(preset: str) -> dict[str, Any]:
    path = CONFIG_DIR / f"speedrun-{preset}.yaml"
    if not path.exists():
        known = sorted(p.stem.removeprefix("speedrun-") for p in CONFIG_DIR.glob("speedrun-*.yaml"))
        raise ValueError(f"unknown speedrun preset {preset!r}; known: {', '.join(known)}")
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def install_default(final: Path, dest: Path | None = None) -> Path:
    """Copy a checkpoint to the default model folder atomically."""
    dest = dest or default_model_dir()
    with atomic_dir(dest) as tmp:
        shutil.copytree(final, tmp, dirs_exist_ok=True)
    return dest


def run(out: str | Path, preset: str = "default", seed: int = 0, set_default: bool = True,
        progress: bool = True, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    from .data.synth import generate_corpus
    from .eval import quick
    from .tokenizer import train_from_files
    from .train.config import TrainConfig
    from .train.loop import read_metrics, train

    cfg = speedrun_config(preset)
    for key, value in (overrides or {}).items():
        section, _, name = key.partition(".")
        if name:
            cfg.setdefault(section, {})[name] = value
        else:
            cfg[section] = value
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    def stage(name: str):
        print(f"\n== {name} ==", flush=True)
        return time.time()

    t = stage("corpus")
    data = out / "data"
    manifest = generate_corpus(data, seed=seed, scale=cfg.get("scale", 1.0), recipe=cfg.get("recipe", "calculate"))
    timings["corpus"] = time.time() - t

    t = stage("tokenizer")
    tok_dir = out / "tokenizer"
    tok = train_from_files([str(data / "pretrain.jsonl"), str(data / "sft_train.jsonl")],
                           cfg["vocab_size"], str(tok_dir), show_progress=progress)
    timings["tokenizer"] = time.time() - t

    stages = {}
    init = None
    for name in ("pretrain", "sft"):
        t = stage(name)
        section = dict(cfg[name])
        files = section.pop("train_files")
        val_files = section.pop("val_files", [])
        tc = TrainConfig(stage=name, out=str(out / name), tokenizer=str(tok_dir), init=init,
                         train=[str(data / f) for f in files], val=[str(data / f) for f in val_files],
                         seed=seed, progress=progress, plugins=manifest["plugins"], **section)
        tc.validate()
        final = train(tc)
        timings[name] = time.time() - t
        rows = read_metrics(out / name / "metrics.jsonl")
        meta = json.loads((final / "mosslm.json").read_text())
        stages[name] = {"dtype": meta.get("train_dtype"), "dtype_choice": meta.get("train_dtype_choice"),
                        "tokens_per_s": _mean_rate(rows), "config": dataclasses.asdict(tc), "final": str(final),
                        "steps": len(rows),
                        "first_loss": rows[0]["loss"], "last_loss": rows[-1]["loss"],
                        "val_loss": next((r["val_loss"] for r in reversed(rows) if "val_loss" in r), None),
                        "tokens": meta.get("tokens_seen")}
        init = str(final)

    t = stage("quick eval")
    eval_cfg = cfg.get("eval", {})
    result = quick.run(init, data / "eval.jsonl", limit_per_task=eval_cfg.get("limit_per_task"),
                       max_new_tokens=eval_cfg.get("max_new_tokens", 96), progress=progress,
                       dtype=eval_cfg.get("dtype", "auto"))
    timings["eval"] = time.time() - t
    (out / "eval.json").write_text(json.dumps(result, ensure_ascii=False, indent=2) + "\n")
    from .eval import report as card, tasks as eval_tasks
    card.write(out / "card", init, {"tools": eval_tasks.tool_metrics(result)}, {"tools": round(timings["eval"], 1)},
               {"from": "moss speedrun", "dtype": result.get("dtype_choice", "fp32")})

    installed = install_default(Path(init)) if set_default else None
    summary = {"preset": preset, "seed": seed, "config": cfg, "corpus": manifest, "vocab_size": len(tok),
               "stages": stages, "timings": timings, "eval": result,
               "model": init, "default_model": str(installed) if installed else None}
    write_report(out, summary)
    return summary


def _mean_rate(rows: list[dict]) -> float | None:
    """Training tokens/s over the run: harmonic mean of the logged windows (total tokens over total time)."""
    rates = [r["tokens_per_s"] for r in rows if r.get("tokens_per_s")]
    return len(rates) / sum(1 / r for r in rates) if rates else None


def write_report(out: Path, s: dict[str, Any]) -> Path:
    from .eval.quick import table

    total = sum(s["timings"].values())
    lines = [
        f"# mosslm speedrun report ({s['preset']})", "",
        f"- machine: {platform.machine()}, {_cpu_line()}, Python {platform.python_version()}",
        f"- total wall time: {total / 60:.1f} min ({total:.0f} s)",
        f"- final model: `{s['model']}`" + (f", installed as the default model at `{s['default_model']}`"
                                            if s["default_model"] else ""),
        f"- tokenizer: byte-level BPE, {s['vocab_size']} tokens", "",
        "## Timings", "", "| stage | seconds |", "|---|---|",
        *[f"| {k} | {v:.1f} |" for k, v in s["timings"].items()], "",
        "## Corpus", "", "```json", json.dumps(s["corpus"], ensure_ascii=False, indent=1), "```", "",
        "## Training", "",
    ]
    for name, st in s["stages"].items():
        c = st["config"]
        lines += [f"### {name}", "",
                  (f"- starts from `{Path(c['init']).parent.name}/final`" if c.get("init") else f"- model preset `{c['preset']}`")
                  + f", seq_len {c['seq_len']}, batch {c['batch_size']}, "
                  f"{st['steps']} steps, lr {c['lr']}, compile {c['compile']}",
                  f"- precision: {st.get('dtype_choice') or c['dtype']}"
                  + (f"; {st['tokens_per_s']:,.0f} tokens/s" if st.get("tokens_per_s") else ""),
                  f"- tokens seen: {st['tokens']:,}" if st["tokens"] else "- tokens seen: n/a",
                  f"- loss: {st['first_loss']:.3f} -> {st['last_loss']:.3f}"
                  + (f" (val {st['val_loss']:.3f})" if st["val_loss"] is not None else ""),
                  "", f"![{name} loss]({name}/loss.png)", ""]
    lines += ["## Quick eval (held-out items: tool choice and answers per plugin, identity, refusals)", "",
              f"- precision: {s['eval'].get('dtype_choice', 'fp32')}", "",
              "![report card](card/card.png)", "",
              "Green bars meet their target (the black tick), red ones miss it. The card's numbers are in "
              "`card/results.json`: `moss eval --compare RUN_A/card RUN_B/card` puts two runs side by side, "
              "and `moss eval --model MODEL --tasks bpb,tools,safety` adds bits per byte and the safety sets.", "",
              table(s["eval"]), "",
              "## Sample dialogues", ""]
    for sample in s["eval"]["samples"]:
        lines += [f"**{sample['task']} ({sample['lang']})**", "", "```", sample["protocol"].rstrip("\n"), "```", ""]
    lines += ["## Config", "", "```yaml", yaml.safe_dump(s["config"], allow_unicode=True, sort_keys=False).rstrip(),
              "```", ""]
    report = out / "report.md"
    tmp = report.with_suffix(".tmp")
    tmp.write_text("\n".join(lines), encoding="utf-8")
    os.replace(tmp, report)
    return report
