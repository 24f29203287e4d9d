"""`moss serve`: its flags and start-up (who may connect, the limits, loading the model)."""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from pathlib import Path

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def add_serve_parser(verbs, sampling_args) -> None:
    srv = verbs.add_parser(
        "serve", help="serve an OpenAI-compatible API (streaming, completions, keys, limits, metrics)",
        description="Serve POST /v1/chat/completions and /v1/completions (streaming or not), GET /v1/models, "
                    "/health and /metrics. Client `tools` are shown to the model as plugins and come back as "
                    "tool_calls; --plugins are run by the server. With keys created (`moss keys create`), "
                    "every request needs `Authorization: Bearer KEY`.")
    srv.add_argument("--model", help="checkpoint folder, .gguf file, a downloaded name or ORG/NAME "
                                     "(default: the default model)")
    srv.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    srv.add_argument("--port", type=int, default=8000)
    srv.add_argument("--adapter", metavar="DIR", help="a LoRA adapter (`moss finetune`'s output) served on top "
                                                       "of --model, merged in memory")
    srv.add_argument("--name", help="model name in the API (default: the folder name)")
    srv.add_argument("--plugins", help="server-side plugins, comma-separated, or 'none' (default: the model's)")
    srv.add_argument("--plugin-path", action="append", default=[], metavar="FILE.py",
                     help="load plugins from a Python file (repeatable)")
    g = srv.add_argument_group("access and limits")
    g.add_argument("--data-dir", type=Path, help="the serving database's folder (default: $MOSSLM_HOME/serve)")
    g.add_argument("--auth", choices=["keys", "none"], default="keys",
                   help="keys (default): requests need a key once any exists; none: an open server")
    g.add_argument("--max-in-flight", type=int, default=256, help="requests answered at once; beyond: 503")
    g.add_argument("--max-running", type=int, default=16, help="requests generating in one batch")
    g.add_argument("--max-waiting", type=int, default=128, help="requests queued for the engine; beyond: 503")
    g.add_argument("--max-body-bytes", type=int, default=4 << 20, help="larger request bodies: 413")
    g.add_argument("--max-tokens-cap", type=int, default=4096, help="max_tokens above it: 400")
    g.add_argument("--request-timeout", type=float, default=600.0, help="wall seconds per request")
    w = srv.add_argument_group("web chat (at /) and moderation")
    w.add_argument("--session-days", type=float, default=7.0, help="a login lasts this long (default: 7 days)")
    w.add_argument("--moderation", choices=["off", "input", "both"], default="off",
                   help="check user messages (input), or also replies as they stream (both); default off")
    w.add_argument("--moderation-words", metavar="FILE",
                   help="the word list, [category] sections of one phrase per line (default: the shipped list)")
    w.add_argument("--moderation-classifier", metavar="SPEC",
                   help="also ask a Python callable: module:function, file.py:function, or an entry point "
                        "of the group mosslm.moderation; it gets (text, stage) and returns a rule name or None")
    b = srv.add_argument_group("backend (GPUs)")
    b.add_argument("--backend", choices=["engine", "vllm"], default="engine",
                   help="engine (default): mosslm's own batching engine; vllm: vLLM's async engine on GPUs "
                        "(installed separately), behind the same API, keys, plugins, store and web chat")
    b.add_argument("--tensor-parallel-size", type=int, default=1, help="vllm: GPUs per model replica")
    b.add_argument("--pipeline-parallel-size", type=int, default=1, help="vllm: pipeline stages (nodes)")
    b.add_argument("--gpu-memory-utilization", type=float, default=0.9, help="vllm: share of GPU memory to use")
    b.add_argument("--distributed-executor-backend", choices=["mp", "ray"],
                   help="vllm: mp (one node) or ray (several nodes; start the Ray cluster first)")
    sampling_args(srv)
    srv.set_defaults(func=cmd_serve)


def _loopback(host: str) -> bool:
    if host in LOOPBACK:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _vllm_config(args: argparse.Namespace, path: Path):
    """The vLLM settings, checked (and vLLM's presence) before the server listens; None for our engine."""
    from ..chat import ChatError

    vllm_flags = args.tensor_parallel_size != 1 or args.pipeline_parallel_size != 1 \
        or args.distributed_executor_backend is not None or args.gpu_memory_utilization != 0.9
    if args.backend != "vllm":
        if vllm_flags:
            raise ChatError("--tensor-parallel-size, --pipeline-parallel-size, --gpu-memory-utilization and "
                            "--distributed-executor-backend need --backend vllm")
        return None
    from ..engine.vllm_backend import VllmConfig, VllmUnavailable, require_vllm

    if args.adapter:
        raise ChatError("--adapter runs on the default backend; for vLLM merge it first (`moss export --merge-lora`)")
    dtype = {"auto": "auto", "fp32": "float32", "bf16": "bfloat16"}[args.dtype]
    config = VllmConfig(tensor_parallel_size=args.tensor_parallel_size,
                        pipeline_parallel_size=args.pipeline_parallel_size,
                        gpu_memory_utilization=args.gpu_memory_utilization, max_num_seqs=args.max_running,
                        distributed_executor_backend=args.distributed_executor_backend, dtype=dtype)
    try:
        config.check(Path(path))
        require_vllm()
    except VllmUnavailable as e:
        raise ChatError(str(e)) from None
    return config


def cmd_serve(args: argparse.Namespace) -> int:
    from ..chat import ChatError, build_agent, model_path
    from ..cli import _sampling_params
    from ..engine.engine import EngineConfig
    from .app import serve
    from .keys import any_keys
    from .server import Server, ServerConfig
    from .store import StoreError, open_db

    from .moderation import ModerationError, Moderator

    for flag in ("max_in_flight", "max_running", "max_waiting", "max_body_bytes", "max_tokens_cap"):
        if getattr(args, flag) < 1:
            print(f"moss serve: --{flag.replace('_', '-')} must be at least 1", file=sys.stderr)
            return 2
    if not args.session_days > 0:
        print("moss serve: --session-days must be above 0", file=sys.stderr)
        return 2
    try:
        params = _sampling_params(args)
        moderator = Moderator.from_config(args.moderation, args.moderation_words, args.moderation_classifier)
        store = open_db(args.data_dir)
    except (ValueError, StoreError, ModerationError) as e:
        print(f"moss serve: {e}", file=sys.stderr)
        return 2
    keyed = any_keys(store)
    if args.auth == "none":
        open_access = True
        if not _loopback(args.host):
            print(f"WARNING: --auth none on {args.host}: anyone who can reach this address can use the model. "
                  "Create keys with `moss keys create` and drop --auth none.", file=sys.stderr)
    elif keyed:
        open_access = False
    elif _loopback(args.host):
        open_access = True
    else:
        print(f"moss serve: no API keys exist, and {args.host} is reachable from other machines. Create one "
              "with `moss keys create`, or pass --auth none to run an open server there.", file=sys.stderr)
        return 2
    name = args.name or (os.path.basename(os.path.normpath(args.model)) if args.model else "default")
    config = ServerConfig(max_in_flight=args.max_in_flight, max_body_bytes=args.max_body_bytes,
                          max_tokens_cap=args.max_tokens_cap, request_timeout_s=args.request_timeout,
                          session_days=args.session_days)
    server = Server(None, name, config, store=store, open_access=open_access,
                    moderator=moderator if moderator.mode != "off" else None)
    engine = EngineConfig(max_running=args.max_running, max_waiting=args.max_waiting)

    try:
        path = model_path(args.model)  # before listening: a wrong --model is an error, not a dead server
        vllm = _vllm_config(args, path)
    except ChatError as e:
        print(f"moss serve: {e}", file=sys.stderr)
        return 2

    def load():
        try:
            agent = build_agent(str(path), args.plugins, params, plugin_paths=args.plugin_path, dtype=args.dtype,
                                engine_config=engine, adapter=args.adapter, vllm=vllm)
        except ChatError as e:
            print(f"moss serve: {e}", file=sys.stderr)
            os._exit(2)  # the HTTP server runs on: only an exit ends it from this thread
        print(f"serving {name} (plugins: {', '.join(agent.plugins) or 'none'})", file=sys.stderr, flush=True)
        return agent

    access = ("open: no API keys exist, so requests need none (this machine only)" if open_access and not keyed
              else "open (--auth none)" if open_access else "API keys required (Authorization: Bearer KEY)")
    print(f"moss serve on http://{args.host}:{args.port}/v1 (web chat: http://{args.host}:{args.port}/), "
          f"database {store.path}; access: {access}; moderation: {args.moderation}", file=sys.stderr, flush=True)
    serve(server, args.host, args.port, load=load)
    return 0
