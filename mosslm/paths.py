"""Where mosslm keeps its files: models, downloads, default model."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def home() -> Path:
    """$MOSSLM_HOME, else $XDG_DATA_HOME/mosslm, else ~/.local/share/mosslm."""
    if os.environ.get("MOSSLM_HOME"):
        return Path(os.environ["MOSSLM_HOME"]).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "mosslm"


def models_dir() -> Path:
    return home() / "models"


def default_model_dir() -> Path:
    """The model plain `moss chat` / `moss serve` use (written by `moss speedrun`)."""
    return models_dir() / "default"


@contextmanager
def atomic_dir(dest: str | os.PathLike) -> Iterator[Path]:
    """Write a folder as a whole: fill the yielded temp folder; on success it
    replaces `dest` with renames, on any error it is removed and `dest` is untouched."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        yield tmp
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        if dest.exists():
            dest.rename(old)
        tmp.rename(dest)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
