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
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's 0700 would keep the result from other users
        yield tmp
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        if dest.exists():
            dest.rename(old)
        tmp.rename(dest)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_file(dest: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator:
    """Write a file as a whole: the yielded file is a temp file beside `dest`, renamed
    over it on success (with the umask's usual permissions), removed on any error."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would keep the result from other users
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as f:
            yield f
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
