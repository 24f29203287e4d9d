"""The training verbs: `moss train pretrain|sft|dpo|plan`, `moss finetune` and `moss export`."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

TRAIN_HELP = ("Train with one explicit loop. Runs data-parallel under `torchrun --nproc_per_node K -m mosslm "
              "train ...` (strategy: ddp, fsdp, zero2 or zero3 in the config).")


def _stage_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config (see configs/)")
    p.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="override config keys")


def add_train_parsers(verbs) -> None:
    train = verbs.add_parser("train", help="pretrain, fine-tune (sft), align (dpo) or plan memory",
                             description=TRAIN_HELP)
    stages = train.add_subparsers(dest="stage", metavar="STAGE")
    for stage, text in (("pretrain", "packed-text pretraining"), ("sft", "supervised fine-tuning on conversations"),
                        ("dpo", "preference training (DPO: sigmoid or IPO loss) on chosen/rejected pairs")):
        p = stages.add_parser(stage, help=text, description=f"{text}. {TRAIN_HELP}")
        _stage_args(p)
        p.set_defaults(func=cmd_train, takes_overrides=True)
    from .plan_cli import add_plan_parser
    add_plan_parser(stages)
    train.set_defaults(func=lambda a: (train.print_help(), 2)[1])

    ft = verbs.add_parser("finetune", help="LoRA fine-tune any base model on your conversations",
                          description="LoRA (QLoRA on a CUDA GPU) on a frozen base: our checkpoints, HF "
                                      "Llama/Qwen2/Mistral folders or a GGUF file (dequantised). Data in any format "
                                      "`moss data check` accepts, with the SFT loss masks. The output folder is an "
                                      "adapter: `moss chat --model OUT/final` loads it on its base, "
                                      "`moss export --merge-lora OUT/final --out DIR` merges it.")
    ft.add_argument("--model", required=True, help="the base: checkpoint folder, HF folder, .gguf file or a "
                                                    "downloaded name (e.g. smollm2)")
    ft.add_argument("--data", nargs="+", required=True, metavar="FILE", help="training conversations")
    ft.add_argument("--val", nargs="*", default=[], metavar="FILE", help="validation conversations")
    ft.add_argument("--out", required=True, help="run folder (checkpoints, metrics, final/)")
    ft.add_argument("--protocol", choices=["moss", "keep"], default="keep",
                    help="moss: teach a base that does not know the MOSS protocol (its terminators and role tags "
                         "become special tokens with trained embeddings, and the chat template is written); "
                         "keep (default): the base already speaks it")
    ft.add_argument("--plugins", default="", help="plugins the model learns to call, recorded for `moss chat` "
                                                  "(e.g. Search,Calculate,Solve)")
    ft.add_argument("--rank", type=int, default=16, help="LoRA rank (default 16)")
    ft.add_argument("--qlora", action="store_true", help="4-bit base weights (bitsandbytes; CUDA GPUs)")
    ft.add_argument("--keep-knowledge", type=int, default=0, metavar="N",
                    help="mix in N tool-free turns whose replies the base writes itself (greedy, its own chat "
                         "template) to general questions, so that it keeps answering them without tools "
                         "(default 0: off; the bundled list has 173, --keep-knowledge-questions gives yours)")
    ft.add_argument("--keep-knowledge-questions", metavar="FILE", help="one question per line for --keep-knowledge")
    _stage_args(ft)
    ft.set_defaults(func=cmd_finetune, takes_overrides=True)

    ex = verbs.add_parser("export", help="a fine-tune as a plain model folder, or a model as one GGUF file",
                          description="--merge-lora: merge a LoRA adapter into its base and write one HF folder "
                                      "that plain transformers (and `moss chat`/`serve`) loads. "
                                      "--format gguf --model M: one .gguf file for llama.cpp (tokenizer, special "
                                      "tokens and chat template in its metadata) and an Ollama Modelfile beside it.")
    ex.add_argument("--merge-lora", metavar="ADAPTER", help="the adapter folder (OUT/final)")
    ex.add_argument("--base", help="the base model (default: the one the adapter's mosslm.json names)")
    ex.add_argument("--format", choices=["hf", "gguf"], default="hf",
                    help="hf (default, with --merge-lora) or gguf (with --model)")
    ex.add_argument("--model", help="with --format gguf: the model to export (folder, .gguf or downloaded name)")
    ex.add_argument("--quant", choices=["f16", "q8_0", "q4_0"], default="f16", help="GGUF weight type (default f16)")
    ex.add_argument("--out", required=True, help="output folder, or the .gguf file (written atomically)")
    ex.set_defaults(func=cmd_export)


def _report(verb: str, e: Exception) -> int:
    print(f"moss {verb}: {e}", file=sys.stderr)
    return 1


def cmd_train(args: argparse.Namespace) -> int:
    from ..model import CheckpointError
    from .config import load_config

    try:
        cfg = load_config(args.config, args.overrides, stage=args.stage)
    except ValueError as e:
        print(f"moss train: {e}", file=sys.stderr)
        return 2
    try:
        if cfg.stage == "dpo":
            from .dpo import run_dpo
            final = run_dpo(cfg, resume=args.resume)
        else:
            from .loop import train
            final = train(cfg, resume=args.resume)
    except (CheckpointError, ValueError, FileNotFoundError) as e:
        return _report("train", e)
    if os.environ.get("RANK", "0") == "0":
        print(f"final checkpoint: {final}")
    return 0


def finetune_config(args: argparse.Namespace):
    from ..chat import ChatError, model_path
    from .config import load_config

    try:
        base = str(model_path(args.model))
    except ChatError as e:
        raise ValueError(str(e)) from None
    plugins = [p.strip() for p in args.plugins.split(",") if p.strip()]
    defaults = [f"init={base}", f"out={args.out}", f"lora_r={args.rank}", f"lora_alpha={2 * args.rank}",
                "lr=5e-4", "warmup_steps=10", "weight_decay=0.0", "max_steps=200", "batch_size=8",
                "micro_batch_size=4", "save_every=50", f"train={','.join(args.data)}"]
    if args.val:
        defaults.append(f"val={','.join(args.val)}")
    cfg = load_config(args.config, defaults + list(args.overrides), stage="sft")
    cfg.add_protocol_tokens = cfg.add_protocol_tokens or args.protocol == "moss"
    cfg.qlora = cfg.qlora or args.qlora
    if plugins:
        cfg.plugins = plugins
    cfg.validate()
    return cfg


def cmd_finetune(args: argparse.Namespace) -> int:
    from ..model import CheckpointError, ModelLoadError
    from .lora import LoraError
    from .loop import train

    try:
        cfg = finetune_config(args)
    except ValueError as e:
        print(f"moss finetune: {e}", file=sys.stderr)
        return 2
    try:
        if args.keep_knowledge > 0:
            cfg.train = list(cfg.train) + [str(keep_knowledge_file(cfg, args.keep_knowledge,
                                                                   args.keep_knowledge_questions))]
        final = train(cfg, resume=args.resume)
    except (CheckpointError, LoraError, ModelLoadError, ValueError, FileNotFoundError) as e:
        return _report("finetune", e)
    if os.environ.get("RANK", "0") == "0":
        print(f"adapter: {final}\n  chat with it: moss chat --model {final}\n"
              f"  merge it:     moss export --merge-lora {final} --out MERGED")
    return 0


def keep_knowledge_file(cfg, n: int, questions_file: str | None) -> Path:
    """OUT/keep_knowledge.jsonl: the base's own answers to n general questions, in the meta instruction of the
    user's first conversation. Written once (atomically) and reused on --resume, so the data stays the same."""
    from ..data.conversations import read_file
    from ..protocol import to_moss_json
    from .distill import keep_knowledge_conversations, read_questions

    path = Path(cfg.out) / "keep_knowledge.jsonl"
    if path.exists():
        return path
    if os.environ.get("RANK", "0") != "0":  # rank 0 writes it (atomically); the others wait for it
        deadline = time.time() + 3600
        while not path.exists():
            if time.time() > deadline:
                raise ValueError(f"rank {os.environ['RANK']}: rank 0 wrote no {path} within an hour")
            time.sleep(2)
        return path
    first = next((conv for _, conv in read_file(cfg.train[0])), None)
    if first is None:
        raise ValueError(f"{cfg.train[0]} holds no conversation to take the meta instruction from")
    convs = keep_knowledge_conversations(cfg.init, first.meta, read_questions(questions_file)[:n])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(to_moss_json(c), ensure_ascii=False) + "\n" for c in convs), encoding="utf-8")
    tmp.replace(path)
    print(f"keep-knowledge: {len(convs)} of the base's own answers in {path}", file=sys.stderr)
    return path


def cmd_export(args: argparse.Namespace) -> int:
    from ..model import CheckpointError, ModelLoadError
    from .lora import LoraError, merge

    if args.format == "gguf":
        return _export_gguf(args)
    if not args.merge_lora:
        print("moss export: give --merge-lora ADAPTER (a fine-tune), or --format gguf --model M", file=sys.stderr)
        return 2

    try:
        out = merge(args.merge_lora, args.out, base=args.base)
    except (CheckpointError, LoraError, ModelLoadError, OSError) as e:
        return _report("export", e)
    print(f"merged model: {out} (plain transformers: AutoModelForCausalLM.from_pretrained({str(out)!r}))")
    return 0


def _export_gguf(args: argparse.Namespace) -> int:
    from ..download import DownloadError, resolve
    from ..model import ModelLoadError
    from ..quant.gguf_export import export
    from ..quant.linear import QuantError

    if not args.model or args.merge_lora:
        print("moss export: --format gguf takes --model M (merge a LoRA adapter first)", file=sys.stderr)
        return 2
    if not args.out.endswith(".gguf"):
        print(f"moss export: --out must name a .gguf file (got {args.out})", file=sys.stderr)
        return 2
    try:
        written = export(str(resolve(args.model)), args.out, args.quant)
    except (QuantError, ModelLoadError, DownloadError, OSError) as e:
        return _report("export", e)
    print(f"{args.quant} GGUF: {written[0]} ({written[0].stat().st_size / 2**20:.1f} MiB)")
    if len(written) > 1:
        print(f"Ollama: cd {written[1].parent} && ollama create NAME -f {written[1].name}")
    return 0
