"""`moss quantize`: its arguments and its command."""

from __future__ import annotations

import argparse
import sys


def add_quantize_parser(verbs) -> None:
    q = verbs.add_parser("quantize", help="int8 / int4 weights for fast CPU inference",
                         description="Write a copy of a model whose linear weights are int8 (a scale per output "
                                     "channel and group of inputs) or int4 (a scale and a zero per group of inputs). "
                                     "The folder loads in `moss chat`, `moss serve` and the engine, which run those "
                                     "linears on mosslm's int8/int4 CPU kernels (torch's where those cannot run).")
    q.add_argument("--model", required=True, help="checkpoint folder, .gguf file or downloaded name (loaded at fp32)")
    q.add_argument("--bits", type=int, choices=[8, 4], required=True)
    q.add_argument("--group-size", type=int,
                   help="inputs per scale. int4: 32/64/128/256 (default: the largest of 128, 64, 32 that divides "
                        "every layer's inputs); int8: 64/128/256, or 0 for one scale per output channel (default: 64 "
                        "where every layer's inputs divide by it)")
    q.add_argument("--out", required=True, help="output folder (written atomically)")
    q.set_defaults(func=cmd_quantize)


def cmd_quantize(args: argparse.Namespace) -> int:
    from ..download import DownloadError, resolve
    from ..model import ModelLoadError
    from . import QuantError, quantize
    from .linear import check_int8_group_size

    try:
        if args.bits == 8:
            check_int8_group_size(args.group_size)  # before loading any weights
    except QuantError as e:
        print(f"moss quantize: {e}", file=sys.stderr)
        return 2
    try:
        spec = quantize(str(resolve(args.model)), args.out, args.bits, args.group_size)
    except (QuantError, ModelLoadError, DownloadError, OSError) as e:
        print(f"moss quantize: {e}", file=sys.stderr)
        return 1
    group = f", groups of {spec['group_size']}" if spec["group_size"] else ", a scale per output channel"
    print(f"int{spec['bits']}{group}: {len(spec['modules'])} linears -> {args.out} (try: moss chat --model {args.out})")
    return 0
