"""Reading a YAML config file that must be a mapping, with errors that name the file (shared by `moss train`,
`moss train plan` and `moss data clean`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def read_mapping(path: Path, error: type[Exception] = ValueError) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise error(f"{path}: invalid YAML: {e}") from None
    if not isinstance(data, dict):
        raise error(f"{path}: the config must be a mapping of keys to values")
    return data
