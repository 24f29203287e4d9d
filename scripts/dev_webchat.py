"""Serve the web chat with the test suite's micro model, for working on the UI by hand.

    .venv/bin/python scripts/dev_webchat.py --port 8765 [--delay 0.1] [--moderation both]

Prints the URL and an invitation code; the model answers the prompts listed in
tests/webchat_fixtures.py. Everything lives in a temporary folder (or --dir).
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from webchat_fixtures import PROMPTS, build_webchat_model, start_webchat  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--delay", type=float, default=0.05, help="seconds per streamed piece")
    ap.add_argument("--moderation", choices=["off", "input", "both"], default="both")
    ap.add_argument("--dir", type=Path, help="keep the model and database here (reused when there)")
    ap.add_argument("--model", type=Path, help="an already built micro model (default: DIR/model)")
    args = ap.parse_args()
    root = args.dir or Path(tempfile.mkdtemp(prefix="mosslm-webchat-"))
    model = args.model or root / "model"
    if not (model / "config.json").exists():
        print("training the micro model (~40 s) ...", file=sys.stderr)
        build_webchat_model(model)
    import conftest  # noqa: F401  (serving() picks a free port; here we want a fixed one)
    import socket

    real_socket = socket.socket

    class FixedPort(real_socket):
        def bind(self, address):
            host, port = address
            return super().bind((host, args.port if port == 0 else port))

    socket.socket = FixedPort
    try:
        with start_webchat(root / "serve", model, token_delay=args.delay, moderation=args.moderation) as chat:
            socket.socket = real_socket
            print(f"web chat: {chat.url}/\ninvitation code: {chat.invite}\nprompts: " + " | ".join(PROMPTS), flush=True)
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
