"""Text2Image against a real local HTTP server with the AUTOMATIC1111 txt2img API shape."""

import base64
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from mosslm import protocol
from mosslm.cli import main
from mosslm.plugins.registry import BUILTINS, run_commands


def png_bytes() -> bytes:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    buffer = io.BytesIO()
    plt.imsave(buffer, np.random.default_rng(0).random((8, 8)), format="png")
    return buffer.getvalue()


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path != "/sdapi/v1/txt2img":
            self.send_response(404)
            self.end_headers()
            return
        if request["prompt"] == "broken":
            body = json.dumps({"images": [base64.b64encode(b"not an image").decode()]}).encode()
        else:
            body = json.dumps({"images": [base64.b64encode(png_bytes()).decode()], "info": request["prompt"]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture()
def server(monkeypatch, tmp_path):
    monkeypatch.setenv("MOSSLM_HOME", str(tmp_path / "home"))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_disabled_without_a_backend_says_how_to_enable(monkeypatch, capsys):
    monkeypatch.delenv("MOSSLM_T2I_URL", raising=False)
    monkeypatch.delenv("MOSSLM_T2I_DIFFUSERS", raising=False)
    assert main(["plugins", "list"]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("Text2Image"))
    assert "DISABLED" in line and "MOSSLM_T2I_URL" in line
    block = run_commands([protocol.Command("Text2Image", "a cat")], BUILTINS)
    assert block == 'Text2Image("a cat") => No result.\n'


def test_image_is_saved_and_the_result_line_refers_to_it(server, monkeypatch, tmp_path):
    monkeypatch.setenv("MOSSLM_T2I_URL", server)
    block = run_commands([protocol.Command("Text2Image", "一幅长城的水墨画")], BUILTINS)
    assert block.startswith('Text2Image("一幅长城的水墨画") => Image generated successfully. Saved to ')
    path = Path(block.split("Saved to ", 1)[1].strip())
    assert path.parent == tmp_path / "home" / "images"
    assert path.read_bytes().startswith(b"\x89PNG")
    assert json.loads(path.with_suffix(".json").read_text())["prompt"] == "一幅长城的水墨画"
    broken = run_commands([protocol.Command("Text2Image", "broken")], BUILTINS)
    assert broken == 'Text2Image("broken") => No result.\n'
