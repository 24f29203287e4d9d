"""Replies as safe HTML: Markdown rendered, then sanitised; citations linked; streaming renders agree."""

import re

from mosslm.serve.render import StreamRenderer, reply_html


def test_markdown_renders_and_raw_html_is_text():
    html = reply_html('**hi** <script>alert(1)</script> <img src=x onerror="alert(1)">\n\n```python\nprint(1<2)\n```')
    assert "<strong>hi</strong>" in html and '<pre><code class="language-python">print(1&lt;2)' in html
    assert "<script" not in html and "<img" not in html and "&lt;script&gt;" in html


def test_links_keep_only_safe_schemes():
    html = reply_html("[a](javascript:alert(1)) [b](https://example.org) [c](data:text/html,x)")
    assert "javascript:" not in html.replace("[a](javascript:alert(1))", "") and 'href="https://example.org"' in html
    assert 'href="data:' not in html and 'rel="noopener noreferrer nofollow"' in html


def test_citations_link_to_their_sources():
    html = reply_html("长城很长<sup><|1|></sup>，也很古老<sup><|2|></sup>。", [("长城", "https://zh.wikipedia.org/wiki/长城")])
    assert '<sup class="cite"><a href="https://zh.wikipedia.org/wiki/长城" title="长城" target="_blank"' in html
    assert '<span class="cite-ref" title="">[2]</span>' in html  # no source 2: shown, not linked
    bad = reply_html("x<sup><|1|></sup>", [('"><script>', "javascript:alert(1)")])
    assert "<script" not in bad and "javascript:" not in bad


def test_streamed_rendering_ends_at_the_whole_render():
    text = ("段落一，**粗体**。\n\n- a\n- b\n\n```\ncode\n\nmore code\n```\n\nEnd <sup><|1|></sup>.\n\n") * 5
    stream = StreamRenderer()
    for end in range(1, len(text) + 1, 2):
        html = stream.render(text[:end], [("s", "https://example.org")])
    assert re.sub(r"\s+", "", html) == re.sub(r"\s+", "", reply_html(text, [("s", "https://example.org")]))
    assert "<pre><code>code\n\nmore code" in html  # a blank line inside a fence never splits it
