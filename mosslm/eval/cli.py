"""`moss eval`: its arguments and its command."""

from __future__ import annotations

import argparse
import sys


def add_eval_parser(verbs) -> None:
    e = verbs.add_parser("eval", help="the report card: bpb, multiple choice, math with tools, tool use, safety",
                         description="Evaluate a model on local tasks and write report.md (tables and PNG plots) "
                                     "and results.json ({task: {metric: value}}). A task is a name or name=PATH: "
                                     "bpb[=FILE.txt], cmmlu=DIR, ceval=DIR, mmlu=DIR, gsm8k=FILE.jsonl, "
                                     "tools[=EVAL.jsonl], safety[=FILE.csv|jsonl]. "
                                     "`moss eval --compare A B` puts two runs side by side.")
    e.add_argument("--model", help="checkpoint folder, .gguf file or downloaded name (default: the default model)")
    e.add_argument("--tasks", default="bpb,tools,safety", help="comma-separated tasks (default bpb,tools,safety)")
    e.add_argument("--limit", type=int, help="at most N items per task")
    e.add_argument("--shots", type=int, default=0, help="multiple choice: solved dev examples before each question")
    e.add_argument("--scoring", default="loglik,generate",
                   help="multiple choice: loglik (the answer letter's log-likelihood), generate (the chat reply's "
                        "letter), or both (default)")
    e.add_argument("--batch-size", type=int, default=16, help="prompts per log-likelihood batch")
    e.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    e.add_argument("--out", default="runs/eval", help="report folder (default runs/eval)")
    e.add_argument("--compare", nargs=2, metavar=("A", "B"), help="two report folders (or results.json files)")
    e.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    from ..chat import ChatError, model_path
    from ..model import ModelLoadError
    from . import report
    from .tasks import TaskError, parse_tasks, run_tasks

    if args.compare:
        try:
            print(report.compare(args.compare[0], args.compare[1], args.out if args.out != "runs/eval" else None))
        except report.ReportError as err:
            print(f"moss eval: {err}", file=sys.stderr)
            return 1
        return 0
    scorings = tuple(s.strip() for s in args.scoring.split(",") if s.strip())
    bad = [s for s in scorings if s not in ("loglik", "generate")]
    if bad or not scorings:
        print(f"moss eval: --scoring takes loglik and/or generate (got {args.scoring!r})", file=sys.stderr)
        return 2
    if args.limit is not None and args.limit < 1 or args.shots < 0 or args.batch_size < 1:
        print("moss eval: --limit and --batch-size must be at least 1, --shots at least 0", file=sys.stderr)
        return 2
    try:
        specs = parse_tasks(args.tasks)
        path = model_path(args.model)
        results, seconds = run_tasks(str(path), specs, args.limit, args.shots, scorings, args.batch_size,
                                     args.dtype)
    except (TaskError, ChatError, ModelLoadError, ValueError, OSError) as err:
        print(f"moss eval: {err}", file=sys.stderr)
        return 1
    settings = {"tasks": args.tasks, "limit": args.limit, "shots": args.shots, "scoring": args.scoring,
                "dtype": args.dtype}
    written = report.write(args.out, str(path), results, seconds, settings)
    print(report.tables(results, seconds))
    print(f"\nreport: {written}")
    return 0
