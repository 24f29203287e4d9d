"""`moss eval` against lm-evaluation-harness on the same local files, and batched scoring's speed, in one run.

    bash scripts/build_lm_eval_env.sh        # lm-eval in its own venv (once)
    python benchmarks/lm_eval_parity.py --out DIR [--questions 500] [--shots 0|5] [--http-questions 100]
        [--subjects field|page] [--speed-only]

On SmolLM2-135M-Instruct (`moss download smollm2`, saved as a plain fp32 HF folder, which is what
lm-eval's `hf` model reads), with the multiple-choice sets of benchmarks/eval_sets.py (Chinese items in
the CMMLU layout, English ones in MMLU's; a subject per field of the handbook, ~36 questions each, or
per page with --subjects page) and the bundled bpb text:
1. ours: `moss eval`'s scoring (accuracy by the answer letter's log-likelihood, bits per byte), batched
   (with few-shot prompts, a subject's shared header and examples run once), then one question at a time
   (our code at batch 1, nothing shared), then the way CMMLU's own script scores (one forward per question
   with full logits, the A-D logits compared);
2. lm-eval `--model hf` on the same prompts (a task YAML over JSONL files holding exactly our prompts),
   its `simple_evaluate` timed in its own process after the model is loaded;
3. lm-eval `--model local-completions` against `moss serve` of the same folder over HTTP (token-id prompts,
   echo, log-probs, the /tokenizer_info probe), on the first --http-questions questions of each set.
Prints accuracy and bpb side by side with their differences in points, and the speed ratios. The last line
is JSON (also DIR/parity.json).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from eval_sets import write_sets  # noqa: E402

from mosslm import model as modellib  # noqa: E402
from mosslm.eval import bpb as bpb_task  # noqa: E402
from mosslm.eval import choice  # noqa: E402
from mosslm.eval.likelihood import encode_pair  # noqa: E402
from mosslm.eval.tasks import BUNDLED_TEXT, pick_letters  # noqa: E402

LM_EVAL = Path(os.environ.get("LM_EVAL_DIR", Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
                              / "mosslm" / "lm-eval"))

HF_SCRIPT = r"""
import json, sys, time
cfg = json.loads(sys.argv[1])
import lm_eval
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager
lm = HFLM(pretrained=cfg["model"], dtype="float32", batch_size=cfg["batch"], device="cpu")
manager = TaskManager(include_path=cfg["include"])
started = time.perf_counter()
out = lm_eval.simple_evaluate(model=lm, tasks=cfg["tasks"], task_manager=manager, limit=cfg.get("limit"))
seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds, "results": out["results"]}))
"""


def our_prompts(sets: dict[str, Path], shots: int = 0) -> dict[str, list[tuple[str, str, choice.Question]]]:
    """{task: [(prompt, letter prefix, question)]} for every question, with `shots` solved dev examples."""
    out = {}
    for name, root in sets.items():
        layout = choice.LAYOUTS[name]
        questions, dev = choice.load(root, name)
        out[name] = [(choice.prompt(q, layout, dev, shots), layout.letter_prefix, q) for q in questions]
    return out


def ours(model, tok, prompts, batch: int, share: bool = True) -> tuple[dict, float]:
    started = time.perf_counter()
    acc = {}
    for name, items in prompts.items():
        picked = pick_letters(model, tok, [p for p, _, _ in items], items[0][1], batch, share_prefixes=share)
        acc[name] = choice.accuracy([q for _, _, q in items], picked)["acc_micro"]
    return acc, time.perf_counter() - started


@torch.no_grad()
def cmmlu_script_way(model, tok, prompts) -> tuple[dict, float]:
    """One forward per question over the prompt, full logits, the highest of the four letters' last-position
    logits (the official CMMLU evaluation's way)."""
    started = time.perf_counter()
    acc = {}
    for name, items in prompts.items():
        picked = []
        for p, prefix, _ in items:
            ids = torch.tensor([tok.encode(p, add_special_tokens=False)])
            last = model(ids).logits[0, -1]
            letter_ids = [encode_pair(tok, p, prefix + letter)[1][0] for letter in choice.LETTERS]
            picked.append(choice.LETTERS[int(torch.argmax(last[letter_ids]))])
        acc[name] = choice.accuracy([q for _, _, q in items], picked)["acc_micro"]
    return acc, time.perf_counter() - started


def lm_eval_tasks(prompts, out: Path, limit: int | None = None) -> Path:
    """A task YAML per set over JSONL docs holding our exact prompts, plus the bpb text as one document."""
    include = out / "lm_eval_tasks"
    include.mkdir(parents=True, exist_ok=True)
    for name, items in prompts.items():
        docs = include / f"{name}.jsonl"
        docs.write_text("".join(json.dumps({"prompt": p, "label": "ABCD".index(q.answer)}, ensure_ascii=False) + "\n"
                                for p, _, q in items[:limit]), encoding="utf-8")
        delimiter = json.dumps(choice.LAYOUTS[name].letter_prefix)
        (include / f"mosslm_{name}.yaml").write_text(textwrap.dedent(f"""\
            task: mosslm_{name}
            dataset_path: json
            dataset_kwargs:
              data_files:
                test: {docs}
            test_split: test
            output_type: multiple_choice
            doc_to_text: "{{{{prompt}}}}"
            doc_to_choice: ["A", "B", "C", "D"]
            doc_to_target: "{{{{label}}}}"
            target_delimiter: {delimiter}
            metric_list:
              - metric: acc
            """), encoding="utf-8")
    docs = include / "bpb.jsonl"
    docs.write_text("".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in bpb_task.documents(BUNDLED_TEXT)),
                    encoding="utf-8")
    (include / "mosslm_bpb.yaml").write_text(textwrap.dedent(f"""\
        task: mosslm_bpb
        dataset_path: json
        dataset_kwargs:
          data_files:
            test: {docs}
        test_split: test
        output_type: loglikelihood_rolling
        doc_to_text: ""
        doc_to_target: "{{{{text}}}}"
        metric_list:
          - metric: word_perplexity
          - metric: byte_perplexity
          - metric: bits_per_byte
        """), encoding="utf-8")
    return include


def lm_eval_hf(folder: Path, include: Path, tasks: list[str], batch: int) -> dict:
    python = LM_EVAL / "bin" / "python"
    cfg = {"model": str(folder), "include": str(include), "tasks": tasks, "batch": batch}
    run = subprocess.run([str(python), "-c", HF_SCRIPT, json.dumps(cfg)], capture_output=True, text=True, timeout=3600)
    if run.returncode:
        raise SystemExit(f"lm-eval hf failed:\n{run.stderr[-3000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lm_eval_http(folder: Path, include: Path, tasks: list[str], out: Path) -> tuple[dict, float]:
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "mosslm", "serve", "--model", str(folder), "--port", str(port),
                               "--dtype", "fp32"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        import urllib.request
        deadline = time.time() + 300
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(1)
        else:
            raise SystemExit("moss serve did not come up")
        name = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models").read())["data"][0]["id"]
        results = out / "lm_eval_http"
        started = time.perf_counter()
        run = subprocess.run([str(LM_EVAL / "bin" / "lm_eval"), "--model", "local-completions", "--model_args",
                              f"model={name},base_url=http://127.0.0.1:{port}/v1/completions,tokenizer_backend=auto,"
                              f"num_concurrent=4,max_retries=1,tokenized_requests=True",
                              "--tasks", ",".join(tasks), "--include_path", str(include), "--output_path", str(results)],
                             capture_output=True, text=True, timeout=3600)
        seconds = time.perf_counter() - started
        if run.returncode:
            raise SystemExit(f"lm-eval local-completions failed:\n{run.stderr[-3000:]}")
        found = sorted(results.rglob("results_*.json"))
        return json.loads(found[-1].read_text())["results"], seconds
    finally:
        server.terminate()
        server.wait(30)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--questions", type=int, default=500)
    ap.add_argument("--http-questions", type=int, default=100, help="per set, for the HTTP run (0: skip it)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--shots", type=int, default=0, help="solved dev examples before each question (CMMLU: 5)")
    ap.add_argument("--subjects", choices=["field", "page"], default="field",
                    help="a subject per field of the handbook (dozens of questions each, as in CMMLU) or per page")
    ap.add_argument("--speed-only", action="store_true", help="time our two ways and stop (no lm-eval)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not (LM_EVAL / "bin" / "python").exists():
        sys.exit(f"no lm-eval venv at {LM_EVAL}: run `bash scripts/build_lm_eval_env.sh` first")

    folder = out / "smollm2-hf"
    if not (folder / "config.json").exists():
        from mosslm.download import KNOWN
        loaded = modellib.load(KNOWN["smollm2"].path)
        loaded.model.save_pretrained(folder, safe_serialization=True)
        loaded.tokenizer.save_pretrained(folder)
    loaded = modellib.load(folder, dtype="fp32")
    model, tok = loaded.model, loaded.tokenizer
    sets = write_sets(out / "sets", args.questions, by=args.subjects)
    prompts = our_prompts(sets, args.shots)
    n = sum(len(v) for v in prompts.values())
    res: dict = {"questions": n, "threads": torch.get_num_threads(), "batch": args.batch, "shots": args.shots,
                 "subjects": {name: len({q.subject for _, _, q in items}) for name, items in prompts.items()}}

    print(f"== ours, batched ({n} questions, {args.shots}-shot)", flush=True)
    res["ours_batched"], res["ours_batched_s"] = ours(model, tok, prompts, args.batch)
    print("== ours, one question at a time (its four letters in one row, no shared prefix)", flush=True)
    res["ours_one"], res["ours_one_s"] = ours(model, tok, prompts, 1, share=False)
    if args.speed_only:
        print(json.dumps(res))
        print(f"ours batched is {res['ours_one_s'] / res['ours_batched_s']:.2f}x faster than one question at a time")
        return 0
    print("== CMMLU's script way (one forward per question, full logits)", flush=True)
    res["script_way"], res["script_way_s"] = cmmlu_script_way(model, tok, prompts)
    started = time.perf_counter()
    res["ours_bpb"] = bpb_task.bits_per_byte(model, tok, [BUNDLED_TEXT], progress=False)["bpb"]
    res["ours_bpb_s"] = time.perf_counter() - started
    del model, loaded

    include = lm_eval_tasks(prompts, out)
    tasks = [f"mosslm_{name}" for name in prompts] + ["mosslm_bpb"]
    print("== lm-eval --model hf", flush=True)
    hf = lm_eval_hf(folder, include, [f"mosslm_{name}" for name in prompts], args.batch)
    res["lm_eval_hf"] = {name: hf["results"][f"mosslm_{name}"]["acc,none"] for name in prompts}
    res["lm_eval_hf_s"] = hf["seconds"]
    res["lm_eval_hf_bpb"] = lm_eval_hf(folder, include, ["mosslm_bpb"], args.batch)["results"]["mosslm_bpb"]["bits_per_byte,none"]

    if args.http_questions:
        small = lm_eval_tasks(prompts, out / "http", args.http_questions)
        print(f"== lm-eval --model local-completions against moss serve ({args.http_questions} per set)", flush=True)
        http, res["lm_eval_http_s"] = lm_eval_http(folder, small, tasks, out)
        res["lm_eval_http"] = {name: http[f"mosslm_{name}"]["acc,none"] for name in prompts}
        res["lm_eval_http_bpb"] = http["mosslm_bpb"]["bits_per_byte,none"]
        sub = {name: items[:args.http_questions] for name, items in prompts.items()}
        m = modellib.load(folder, dtype="fp32").model
        res["ours_http_subset"], _ = ours(m, tok, sub, args.batch)
        del m

    print(f"\n## SmolLM2-135M-Instruct, fp32, {res['threads']} threads, {n} questions ({args.shots}-shot)\n")
    print("| set | ours | lm-eval hf | difference (points) |\n|---|---|---|---|")
    for name in prompts:
        a, b = res["ours_batched"][name], res["lm_eval_hf"][name]
        print(f"| {name} | {a:.1%} | {b:.1%} | {100 * (a - b):+.2f} |")
    print(f"| bpb | {res['ours_bpb']:.4f} | {res['lm_eval_hf_bpb']:.4f} | {res['ours_bpb'] - res['lm_eval_hf_bpb']:+.4f} bits |")
    if args.http_questions:
        print(f"\n| set (first {args.http_questions}) | ours | lm-eval local-completions vs moss serve | difference |\n|---|---|---|---|")
        for name in prompts:
            a, b = res["ours_http_subset"][name], res["lm_eval_http"][name]
            print(f"| {name} | {a:.1%} | {b:.1%} | {100 * (a - b):+.2f} |")
        print(f"| bpb | {res['ours_bpb']:.4f} | {res['lm_eval_http_bpb']:.4f} | "
              f"{res['ours_bpb'] - res['lm_eval_http_bpb']:+.4f} bits |")
    print(f"\n| scoring {n} questions | seconds | ours batched is |\n|---|---|---|")
    for label, key in (("ours, batched", "ours_batched_s"), ("ours, one question at a time", "ours_one_s"),
                       ("CMMLU's script way", "script_way_s"), ("lm-eval hf (batch %d)" % args.batch, "lm_eval_hf_s")):
        print(f"| {label} | {res[key]:.1f} | {res[key] / res['ours_batched_s']:.2f}x faster |")
    (out / "parity.json").write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
