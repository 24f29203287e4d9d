"""`moss eval`'s tasks: a name, or `name=PATH` for one read from local files, each run on one loaded model.

| task | input | metrics |
|---|---|---|
| `bpb[=FILE.txt]` | text files (default: the bundled English/Chinese text) | bpb, bytes per token |
| `cmmlu=DIR`, `ceval=DIR`, `mmlu=DIR` | the benchmark's CSV folders | acc by log-likelihood and by generation, per subject |
| `gsm8k=FILE.jsonl` | question / answer `#### n` | accuracy with and without Calculate, tool-call rate, valid calls |
| `tools[=EVAL.jsonl]` | quick-eval items (default: a held-out set generated here) | the speedrun's tool-use metrics |
| `safety[=FILE]` | the bundled bilingual sets, or an external CSV/JSONL | refusal rate, false-refusal rate |
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from . import bpb as bpb_task
from . import choice, gsm8k, quick, safety
from .answers import Answerer, Asked, trained_plugins
from .likelihood import encode_pair, loglikelihoods

BUNDLED_TEXT = Path(__file__).resolve().parents[1] / "resources" / "eval" / "bpb.txt"
NEEDS_PATH = ("cmmlu", "ceval", "mmlu", "gsm8k")
TASKS = ("bpb", "cmmlu", "ceval", "mmlu", "gsm8k", "tools", "safety")
TOOL_TASKS = ("arithmetic", "solve", "search", "multi", "identity")


class TaskError(ValueError):
    pass


@dataclass(frozen=True)
class TaskSpec:
    name: str
    path: str | None = None


def parse_tasks(spec: str) -> list[TaskSpec]:
    tasks = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        name, _, path = part.partition("=")
        name = name.strip().lower()
        if name not in TASKS:
            raise TaskError(f"unknown task {name!r}; tasks: {', '.join(TASKS)} (a name, or name=PATH)")
        if name in NEEDS_PATH and not path:
            raise TaskError(f"the {name} task reads local files: give {name}=PATH "
                            f"({'a JSONL file' if name == 'gsm8k' else 'its folder of CSV files'})")
        if path and not Path(path).exists():
            raise TaskError(f"{name}={path}: no such file or folder")
        tasks.append(TaskSpec(name, path or None))
    if not tasks:
        raise TaskError("no tasks given (--tasks bpb,tools,safety,cmmlu=DIR,...)")
    return tasks


def pick_letters(model, tokenizer, prompts: list[str], letter_prefix: str, batch_size: int,
                 progress: str | None = None, share_prefixes: bool = True) -> list[str]:
    """Each prompt's answer letter with the highest log-likelihood (the first on a tie, as lm-eval's argmax)."""
    requests = [encode_pair(tokenizer, p, letter_prefix + letter) for p in prompts for letter in choice.LETTERS]
    scores = loglikelihoods(model, tokenizer, requests, batch_size, progress, share_prefixes)
    picked = []
    for i in range(len(prompts)):
        row = [s.logprob for s in scores[4 * i:4 * i + 4]]
        picked.append(choice.LETTERS[row.index(max(row))])
    return picked


def multiple_choice(loaded, answerer_factory, spec: TaskSpec, shots: int, limit: int | None,
                    scorings: tuple[str, ...], batch_size: int, progress: bool) -> dict:
    layout = choice.LAYOUTS[spec.name]
    questions, dev = choice.load(spec.path, spec.name)
    questions = questions[:limit] if limit else questions
    prompts = [choice.prompt(q, layout, dev, shots) for q in questions]
    result: dict = {"n": len(questions), "shots": shots}
    if "loglik" in scorings:
        picked = pick_letters(loaded.model, loaded.tokenizer, prompts, layout.letter_prefix, batch_size,
                              f"{spec.name} loglik" if progress else None)
        acc = choice.accuracy(questions, picked)
        result.update({"acc_loglik": acc["acc"], "acc_loglik_micro": acc["acc_micro"],
                       "subjects_loglik": acc["subjects"]})
    if "generate" in scorings:
        answerer = answerer_factory()
        turns = answerer.answer([Asked(p) for p in prompts], [])
        acc = choice.accuracy(questions, [choice.first_letter(t.reply or "") for t in turns])
        result.update({"acc_generate": acc["acc"], "subjects_generate": acc["subjects"]})
        if answerer.too_long:
            result["generate_too_long"] = answerer.too_long
    return result


def tools(answerer: Answerer, model_dir, spec: TaskSpec, limit: int | None, progress: bool) -> dict:
    if spec.path:
        items = quick.load_items(spec.path, limit)
    else:
        from ..data import synth
        with tempfile.TemporaryDirectory() as tmp:
            synth.generate_corpus(tmp, seed=0, recipe="plugins")
            items = quick.load_items(Path(tmp) / "eval.jsonl", limit)
        items = [i for i in items if i["task"] in TOOL_TASKS]
    return tool_metrics(quick.run_items(answerer, items, trained_plugins(model_dir) or ["Calculate"]))


def tool_metrics(result: dict) -> dict:
    """A quick-eval result as the report card's `tools` row: {"task/metric": value, "task/n": count}."""
    flat = {f"{task}/{metric}": value for task, metrics in result["metrics"].items() for metric, value in metrics.items()}
    flat.update({f"{task}/n": n for task, n in result["counts"].items()})
    return flat


def run_tasks(model_dir: str, specs: list[TaskSpec], limit: int | None = None, shots: int = 0,
              scorings: tuple[str, ...] = ("loglik", "generate"), batch_size: int = 16, dtype: str = "auto",
              max_new_tokens: int = 128, progress: bool = True) -> tuple[dict, dict]:
    """({task: {metric: value}}, {task: seconds})."""
    from ..model import load

    loaded = load(model_dir, dtype=dtype)
    answerers: dict[str, Answerer] = {}

    def answerer(kind: str = "plain") -> Answerer:
        if kind not in answerers:
            answerers[kind] = Answerer(loaded, quick.eval_plugins() if kind == "tools" else None,
                                       max_new_tokens if kind != "choice" else 16)
        return answerers[kind]

    results, seconds = {}, {}
    try:
        for spec in specs:
            started = time.time()
            if progress:
                print(f"== {spec.name}" + (f" ({spec.path})" if spec.path else ""), flush=True)
            if spec.name == "bpb":
                results["bpb"] = bpb_task.bits_per_byte(loaded.model, loaded.tokenizer, [spec.path or BUNDLED_TEXT],
                                                        batch_size, progress=progress)
            elif spec.name in choice.LAYOUTS:
                results[spec.name] = multiple_choice(loaded, lambda: answerer("choice"), spec, shots, limit,
                                                     scorings, batch_size, progress)
            elif spec.name == "gsm8k":
                results["gsm8k"] = gsm8k.run(answerer("tools"), gsm8k.load(spec.path, limit))
            elif spec.name == "tools":
                results["tools"] = tools(answerer("tools"), model_dir, spec, limit, progress)
            elif spec.name == "safety":
                results["safety"] = safety.run(answerer("plain"), spec.path, limit)
            seconds[spec.name] = round(time.time() - started, 1)
    finally:
        for a in answerers.values():
            a.close()
    return results, seconds
