import pytest

from mosslm import protocol
from mosslm.engine import IncrementalDetokenizer, StopMatcher

TEXTS = [
    "你好，世界！这是一个测试。", "Hello, world! 1234567890", "😀🎉👩‍👩‍👧 emoji ZWJ",
    "tabs\tand\nnewlines\r\n\x00\x07\x1b[31m控制字符", "mixed 中文English混合123abc", "def f(x):\n    return x ** 2\n",
    "  leading and trailing spaces  ", "¡Hola! Ünïcödé ÅÄÖ ✓ ∑∫√", "𠀀𪚥 rare CJK", "",
]


@pytest.mark.parametrize("text", TEXTS)
def test_tokenizer_roundtrip(tiny_tokenizer, text):
    ids = tiny_tokenizer.encode(text, add_special_tokens=False)
    assert tiny_tokenizer.decode(ids, skip_special_tokens=False) == text


def test_terminators_and_role_tags_are_single_tokens(tiny_tokenizer):
    for tag in protocol.TERMINATORS + protocol.ROLE_TAGS:
        assert len(tiny_tokenizer.encode(tag, add_special_tokens=False)) == 1, tag


def test_pretokenizer_separates_cjk_latin_and_digits(tiny_tokenizer):
    pieces = [p for p, _ in tiny_tokenizer.backend_tokenizer.pre_tokenizer.pre_tokenize_str("中文English123")]
    decoded = [bytes(tiny_tokenizer.backend_tokenizer.decoder.decode([p]).encode()) for p in pieces]
    assert [d.decode() for d in decoded] == ["中文", "English", "1", "2", "3"]


def test_stream_never_splits_characters(tiny_tokenizer):
    text = "中文流式输出😀测试：你好世界🎉！"
    ids = tiny_tokenizer.encode(text, add_special_tokens=False)
    # The tiny vocabulary must really split characters for this test to mean something.
    assert any("\ufffd" in tiny_tokenizer.decode([i]) for i in ids)
    detok = IncrementalDetokenizer(tiny_tokenizer)
    deltas = [detok.push(i) for i in ids] + [detok.flush()]
    assert "".join(deltas) == text
    for d in deltas:
        assert "\ufffd" not in d
        d.encode("utf-8")  # whole characters only


def test_stop_matcher_holds_back_partial_stops():
    m = StopMatcher(["<eom>", "<|Human|>:"])
    out = [m.feed(x) for x in ["Hello <e", "o", "m> tail"]]
    assert "".join(out) == "Hello " and m.stopped_on == "<eom>"
    m2 = StopMatcher(["<eom>"])
    assert m2.feed("a <e") == "a " and m2.feed("x") == "<ex" and m2.flush() == ""


def test_tokenizer_roundtrips_random_text(tiny_tokenizer):
    import random

    rng = random.Random(0)
    ranges = [(0x00, 0x7F), (0x80, 0x7FF), (0x4E00, 0x9FFF), (0x1F300, 0x1FAFF), (0x10000, 0x10FFFF), (0xE000, 0xFFFD)]
    for _ in range(300):
        text = "".join(chr(rng.randint(*rng.choice(ranges))) for _ in range(rng.randint(0, 40)))
        ids = tiny_tokenizer.encode(text, add_special_tokens=False)
        assert tiny_tokenizer.decode(ids, skip_special_tokens=False) == text, repr(text)
