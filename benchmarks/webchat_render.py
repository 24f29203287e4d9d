"""What rendering a streamed web chat reply costs on the server, per reply.

    python benchmarks/webchat_render.py [--blocks 40] [--piece 3]

Every `delta` event of POST /api/chat carries the whole reply so far as
sanitised HTML (markdown-it-py + nh3). Rendering the whole text again for each
delta costs O(n^2) in the reply's length; `StreamRenderer` keeps the finished
blocks and renders only the unfinished one. Both run here on the same growing
Markdown reply (Chinese and English paragraphs, lists, code blocks), fed
`--piece` characters per delta; the script prints the total seconds of each,
their ratio, and checks that both end at the same HTML.
"""

from __future__ import annotations

import argparse
import re
import time

from mosslm.serve.render import StreamRenderer, reply_html

BLOCK = ("这是一段**中文**说明，带有 `code` 和一个引用<sup><|1|></sup>。\n\n"
         "An English paragraph that wraps over a few words, with *emphasis*.\n\n"
         "- item one\n- item two\n\n```python\ndef f(x):\n\n    return x * 2\n```\n\n")


def run(text: str, piece: int, render) -> tuple[float, str]:
    started, html = time.perf_counter(), ""
    for end in range(piece, len(text) + piece, piece):
        html = render(text[:end])
    return time.perf_counter() - started, html


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blocks", type=int, default=40, help="repeats of the sample block (~160 chars each)")
    ap.add_argument("--piece", type=int, default=3, help="characters per delta (a token is 1-4)")
    args = ap.parse_args()
    text = BLOCK * args.blocks
    sources = [("Source", "https://example.org/a")]
    deltas = -(-len(text) // args.piece)
    full_s, full_html = run(text, args.piece, lambda t: reply_html(t, sources))
    stream = StreamRenderer()
    inc_s, inc_html = run(text, args.piece, lambda t: stream.render(t, sources))
    same = re.sub(r"\s+", "", full_html) == re.sub(r"\s+", "", inc_html)
    print(f"reply: {len(text)} characters in {deltas} deltas")
    print(f"whole re-render per delta: {full_s:.3f} s ({full_s / deltas * 1000:.2f} ms/delta)")
    print(f"StreamRenderer:            {inc_s:.3f} s ({inc_s / deltas * 1000:.2f} ms/delta)")
    print(f"ratio: {full_s / inc_s:.1f}x less render time; same final HTML: {same}")
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
