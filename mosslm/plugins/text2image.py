"""Text2Image backends: an AUTOMATIC1111-style HTTP API or a local diffusers pipeline.

Configured by environment:
  MOSSLM_T2I_URL        base URL of a server with POST /sdapi/v1/txt2img
  MOSSLM_T2I_DIFFUSERS  a local diffusers pipeline folder (needs `pip install diffusers`)
Images are saved under $MOSSLM_HOME/images; the result line names the file.
Without a backend the plugin is disabled, and says how to enable it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import urllib.request
from pathlib import Path

from ..paths import home
from .http import fetch_json

MAX_BYTES = 20_000_000
TIMEOUT = 120.0
# The first sentence is what the MOSS SFT data trained on.
SUCCESS = "Image generated successfully."


class Text2ImageError(RuntimeError):
    pass


def disabled_reason() -> str | None:
    if os.environ.get("MOSSLM_T2I_URL"):
        return None
    folder = os.environ.get("MOSSLM_T2I_DIFFUSERS")
    if folder:
        import importlib.util
        if importlib.util.find_spec("diffusers") is None:
            return "MOSSLM_T2I_DIFFUSERS is set but diffusers is not installed (pip install diffusers)"
        return None if Path(folder).is_dir() else f"MOSSLM_T2I_DIFFUSERS={folder} is not a folder"
    return "no image backend: set MOSSLM_T2I_URL (an /sdapi/v1/txt2img server) or MOSSLM_T2I_DIFFUSERS (a pipeline folder)"


def _save(png: bytes, description: str) -> Path:
    folder = home() / "images"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{hashlib.sha256(png).hexdigest()[:16]}.png"
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(png)
    os.replace(tmp, path)
    (path.with_suffix(".json")).write_text(json.dumps({"prompt": description}, ensure_ascii=False))
    return path


def _http(url: str, description: str) -> bytes:
    body = json.dumps({"prompt": description, "steps": 20, "width": 512, "height": 512}).encode()
    request = urllib.request.Request(url.rstrip("/") + "/sdapi/v1/txt2img", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    data = fetch_json(request, TIMEOUT, MAX_BYTES)
    images = data.get("images") if isinstance(data, dict) else None
    if not images or not isinstance(images[0], str):
        raise Text2ImageError("the image server answered without an image")
    png = base64.b64decode(images[0].split(",", 1)[-1], validate=False)
    if not png.startswith(b"\x89PNG"):
        raise Text2ImageError("the image server did not return a PNG")
    return png


def _diffusers(folder: str, description: str) -> bytes:
    import io

    from diffusers import DiffusionPipeline  # optional dependency

    image = DiffusionPipeline.from_pretrained(folder)(description).images[0]
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def text2image(description: str) -> str:
    reason = disabled_reason()
    if reason:
        raise Text2ImageError(reason)
    url = os.environ.get("MOSSLM_T2I_URL")
    png = _http(url, description) if url else _diffusers(os.environ["MOSSLM_T2I_DIFFUSERS"], description)
    return f"{SUCCESS} Saved to {_save(png, description)}"
