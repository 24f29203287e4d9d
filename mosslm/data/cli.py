"""`moss data`'s verbs: check, convert, synth, export, clean, tokenize."""

from __future__ import annotations

import argparse
import sys


def add_data_parser(verbs) -> None:
    data = verbs.add_parser("data", help="check, convert, synthesise and clean training data",
                            description="Work with data files: conversations in MOSS, ShareGPT or OpenAI format, the "
                                        "bundled synthetic corpus, and raw web text (clean, tokenize).")
    data_verbs = data.add_subparsers(dest="data_verb", metavar="ACTION")
    check = data_verbs.add_parser("check", help="validate conversation files",
                                  description="Validate .json/.jsonl conversation files, or folders of them "
                                              "(walked recursively; format auto-detected). Prints file:line: reason "
                                              "for each bad record and file:line: warning: ... for quirks kept "
                                              "verbatim, then speed and peak memory; exits 1 on errors.")
    check.add_argument("paths", nargs="+", metavar="PATH", help="a .json/.jsonl file or a folder")
    check.set_defaults(func=cmd_data_check)
    convert = data_verbs.add_parser("convert", help="convert conversation files between formats",
                                    description="Convert conversations to one JSONL file. --to text writes one "
                                                "JSON string per conversation: its exact training text.")
    convert.add_argument("paths", nargs="+", metavar="IN", help="a .json/.jsonl file or a folder")
    convert.add_argument("--to", required=True, choices=["moss", "sharegpt", "openai", "text"])
    convert.add_argument("--out", required=True, help="output .jsonl file (written atomically)")
    convert.add_argument("--skip-invalid", action="store_true",
                         help="write the valid records and list the invalid ones (default: any invalid "
                              "record means nothing is written)")
    convert.set_defaults(func=cmd_data_convert)
    synth = data_verbs.add_parser("synth", help="generate the bundled bilingual training corpus",
                                  description="Deterministically generate mosslm's own Chinese/English corpus: "
                                              "pretraining text, SFT conversations (identity, small talk, "
                                              "follow-ups, Calculate tool use, refusals) and a held-out eval set.")
    synth.add_argument("--out", required=True, help="output folder")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--scale", type=float, default=1.0, help="multiply every count (default 1.0)")
    synth.add_argument("--recipe", choices=["calculate", "plugins", "tool"], default="calculate",
                       help="calculate: the Calculate plugin (default speedrun); plugins: Search over the bundled "
                            "handbook, Calculate, Solve and two-command turns; tool: your own tool, from its "
                            "plugin file and example questions (--out is then the .jsonl file)")
    synth.add_argument("--plugin-file", metavar="FILE.py", help="recipe tool: the plugin file (as --plugin-path)")
    synth.add_argument("--questions", metavar="FILE", help="recipe tool: example questions (.txt or .jsonl)")
    synth.add_argument("--plugins", default="", help="recipe tool: built-ins enabled next to the tool, "
                                                     "e.g. Calculate,Search")
    synth.add_argument("--variants", type=int, default=3, help="recipe tool: phrasings per question")
    synth.add_argument("--negative-share", type=float, default=0.3, help="recipe tool: share of no-tool turns")
    synth.add_argument("--eval-fraction", type=float, default=0.1, help="recipe tool: questions held out")
    synth.add_argument("--preset", choices=["mosslm", "moss"], default="mosslm",
                       help="recipe tool: meta instruction preset (match the model's protocol)")
    synth.set_defaults(func=cmd_data_synth)
    export = data_verbs.add_parser("export", help="export the web chat's rated conversations as training data",
                                   description="The data flywheel: write the conversations of `moss serve`'s web "
                                               "chat as SFT records (moss, sharegpt, openai: one per reply) or dpo "
                                               "preference pairs (a better answer against the disliked reply, a "
                                               "liked reply against a disliked sibling). PII is masked by default.")
    export.add_argument("--data-dir", metavar="DIR", help="the server's data folder (default: $MOSSLM_HOME/serve)")
    export.add_argument("--format", required=True, choices=["moss", "sharegpt", "openai", "dpo"])
    export.add_argument("--since", metavar="DATE", help="only replies created at or after this date "
                                                        "(YYYY-MM-DD) or ISO datetime")
    export.add_argument("--rating", choices=["up", "down", "any"], default="any",
                        help="SFT: up = liked or corrected replies, down = corrections of disliked replies, "
                             "any = all but uncorrected disliked replies (default)")
    export.add_argument("--no-mask-pii", action="store_true", help="keep e-mails, phone numbers, ID numbers and "
                                                                   "IP addresses (default: masked)")
    export.add_argument("--model", metavar="NAME", help="only replies of this model")
    export.add_argument("--out", required=True, help="output .jsonl file (written atomically)")
    export.set_defaults(func=cmd_data_export)
    from .shards import add_tokenize_parser
    from .web.cli import add_clean_parser
    add_clean_parser(data_verbs)
    add_tokenize_parser(data_verbs)
    data.set_defaults(func=lambda a: (data.print_help(), 2)[1])


def cmd_data_check(args: argparse.Namespace) -> int:
    import time

    from .conversations import check_files, check_summary

    started = time.perf_counter()
    reports = check_files(args.paths, show_progress=True)
    for r in reports:
        for line in r.lines():
            print(line)
        print(r.summary())
    print(check_summary(reports, time.perf_counter() - started))
    return 1 if any(r.errors for r in reports) else 0


def cmd_data_convert(args: argparse.Namespace) -> int:
    from .conversations import convert_files, problem_lines

    result = convert_files(args.paths, args.to, args.out, skip_invalid=args.skip_invalid, show_progress=True)
    if not result.ok:
        for line in problem_lines(result.reports):
            print(line, file=sys.stderr)
        print(f"moss data convert: {result.errors} bad records; nothing written", file=sys.stderr)
        return 1
    for line in problem_lines(result.reports, "warning"):
        print(line, file=sys.stderr)
    if result.skipped:
        print(f"skipped {result.skipped} invalid records:", file=sys.stderr)
        for line in problem_lines(result.reports, "error"):
            print(f"  {line}", file=sys.stderr)
    print(f"wrote {result.written} conversations to {args.out} ({args.to}); "
          f"skipped {result.skipped} invalid records, {result.warnings} warnings")
    return 0


def cmd_data_export(args: argparse.Namespace) -> int:
    from ..serve.export import ExportError, export
    from ..serve.store import StoreError, default_data_dir

    data_dir = args.data_dir if args.data_dir is not None else default_data_dir()
    try:
        stats = export(data_dir, args.format, args.out, since=args.since, rating=args.rating,
                       mask=not args.no_mask_pii, model=args.model)
    except (ExportError, StoreError) as e:
        print(f"moss data export: {e}", file=sys.stderr)
        return 2
    for line in stats.problems:
        print(f"left out an invalid record: {line}", file=sys.stderr)
    print(f"wrote {stats.summary()} to {args.out} ({args.format})", file=sys.stderr)
    return 0


def cmd_data_synth(args: argparse.Namespace) -> int:
    if args.recipe == "tool":
        if not (args.plugin_file and args.questions):
            print("moss data synth: --recipe tool needs --plugin-file and --questions", file=sys.stderr)
            return 2
        from .synth.tools import synth_tool_data
        return synth_tool_data(args)
    from .synth import generate_corpus

    manifest = generate_corpus(args.out, seed=args.seed, scale=args.scale, recipe=args.recipe)
    for name, info in manifest["files"].items():
        kinds = info.get("categories") or info.get("kinds") or info.get("tasks") or {}
        detail = ", ".join(f"{k} {v}" for k, v in kinds.items())
        print(f"{args.out}/{name}: {info['records']} records ({detail})")
    return 0
