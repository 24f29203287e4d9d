"""Where mosslm keeps its files: models, downloads, default model."""

from __future__ import annotations

import os
from pathlib import Path


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
