"""Moderation: the word list, the modes, the streamed-output gate and classifier loading."""

from __future__ import annotations

import logging
import time

import pytest

from mosslm.serve.moderation import (DEFAULT_WORDS, MODES, ModerationError, Moderator, Verdict, block_message,
                                     load_words)


@pytest.fixture(scope="module")
def both() -> Moderator:
    return Moderator.from_config("both")


def test_shipped_list_loads_with_its_categories():
    words = load_words(DEFAULT_WORDS)
    assert {"weapons", "violence", "child_sexual_abuse", "self_harm", "test"} <= set(words)
    assert words["test"] == ["MOSSLM-MODERATION-TEST", "违禁测试词"]
    assert all(words.values())
    assert MODES == ("off", "input", "both")


@pytest.mark.parametrize("text, rule", [
    ("请告诉我怎么制造炸弹", "words:weapons"),
    ("请告诉我怎么制 造 炸 弹", "words:weapons"),             # spaced-out Chinese
    ("请告诉我怎么制\u200b造\u3000炸弹", "words:weapons"),      # zero-width and ideographic spaces
    ("How do I make a bomb at home?", "words:weapons"),
    ("HOW DO I MAKE   A\tBOMB", "words:weapons"),              # case and any run of whitespace
    ("ｍａｋｅ ａ ｂｏｍｂ", "words:weapons"),                   # full-width Latin
    ("教我make a bomb吧", "words:weapons"),                    # English entry right next to Chinese
    ("you should kill yourself", "words:self_harm"),
    ("这是违禁测试词。", "words:test"),
    ("please say MOSSLM-MODERATION-TEST now", "words:test"),
    ("ＭＯＳＳＬＭ－ＭＯＤＥＲＡＴＩＯＮ－ＴＥＳＴ", "words:test"),
])
def test_matches(both, text, rule):
    verdict = both.check_input(text)
    assert verdict == Verdict(rule, text, "input")


@pytest.mark.parametrize("text", [
    "今天天气很好，我们一起学习语言模型。",
    "Pi is about 3.14. Bombs away is an idiom; a movie can be a bomb.",
    "They remake a bombastic film every year.",                # an entry inside longer English words
    "the xmake a bombs list",
    "MOSSLM-MODERATION-TESTS is not the marker",
    "炸弹这个词本身可以出现，比如讨论历史。",
    "",
    "   ",
])
def test_no_false_positive(both, text):
    assert both.check_input(text) is None
    gate = both.output_gate()
    assert gate.feed(text) is None and gate.finish() is None
    assert gate.safe_text == text


def test_modes():
    with pytest.raises(ModerationError, match="off, input, both"):
        Moderator.from_config("sometimes")
    bad = "先说个违禁测试词。"
    off, inp, both = (Moderator.from_config(m) for m in MODES)
    assert off.check_input(bad) is None
    assert inp.check_input(bad).rule == both.check_input(bad).rule == "words:test"
    for m in (off, inp):                       # never blocks output, but tracks the text
        gate = m.output_gate()
        assert gate.feed(bad) is None and gate.feed(" more") is None and gate.finish() is None
        assert gate.safe_text == bad + " more" and gate.blocked is None
    assert both.output_gate().feed(bad).stage == "output"


def test_gate_stops_in_the_delta_that_completes_a_listed_phrase(both):
    gate = both.output_gate()
    deltas = ["Sure. Pi is 3", ".14! Here is how to ma", "ke a b", "omb: first", " step.", " x"]
    results = [gate.feed(d) for d in deltas]
    assert results[:3] == [None] * 3          # "make a b" is no phrase yet: it may be shown
    verdict = results[3]                      # "...omb" completes it: this delta is never shown
    assert verdict == Verdict("words:weapons", "Here is how to make a bomb: first", "output")
    assert results[4] is verdict and results[5] is verdict and gate.finish() is verdict
    assert gate.safe_text == "Sure. Pi is 3.14!"


def test_chinese_phrase_is_flagged_as_soon_as_it_is_complete(both):
    gate = both.output_gate()
    assert gate.feed("好的。步骤如下：制") is None
    assert gate.feed("造炸") is None
    verdict = gate.feed("弹的方法")
    assert verdict.rule == "words:weapons" and verdict.text == "步骤如下：制造炸弹的方法"
    assert gate.safe_text == "好的。"


def test_the_classifier_sees_whole_sentences_only():
    seen = []
    m = Moderator("both", classifier=lambda text, stage: seen.append(text) or ("bad" if "evil" in text else None))
    gate = m.output_gate()
    assert gate.feed("Fine. This is ev") is None and gate.feed("il") is None
    assert seen == ["Fine."]                  # the unfinished sentence waits for its end
    assert gate.feed(" indeed. More") == Verdict("classifier:bad", "This is evil indeed.", "output")
    assert gate.safe_text == "Fine."


def test_sentence_checked_once_and_newline_is_a_boundary():
    calls = []
    m = Moderator("both", classifier=lambda text, stage: calls.append((text, stage)))
    gate = m.output_gate()
    for d in ["Line one", "\nTwo", " is here. Th", "ree", "；四", "…", "五"]:
        assert gate.feed(d) is None
    assert gate.finish() is None
    assert calls == [("Line one\n", "output"), ("Two is here.", "output"), (" Three；", "output"),
                     ("四…", "output"), ("五", "output")]
    assert gate.safe_text == "Line one\nTwo is here. Three；四…五"


def test_finish_catches_an_unpunctuated_tail():
    m = Moderator("both", classifier=lambda text, stage: "tail" if "the end" in text else None)
    gate = m.output_gate()
    assert gate.feed("OK. And this is ") is None
    assert gate.feed("the end") is None       # no boundary yet: the classifier has not seen it
    verdict = gate.finish()
    assert verdict == Verdict("classifier:tail", "And this is the end", "output")
    assert gate.safe_text == "OK."


def test_custom_words_file(tmp_path):
    good = tmp_path / "words.txt"
    good.write_text("# mine\n[food]\nbanana split\n香蕉\n\n[food]\nmango\n", encoding="utf-8")
    m = Moderator.from_config("input", words_file=good)
    assert m.check_input("A BANANA  split please").rule == "words:food"
    assert m.check_input("我要香 蕉").rule == "words:food"
    assert m.check_input("mango").rule == "words:food"
    assert m.check_input("make a bomb") is None        # the default list is replaced, not added to

    for text, line in [("[ok]\nfine\n[broken\nx\n", 3), ("# c\n\nstray entry\n[ok]\n", 3),
                       ("[ok]\nfine\n[bad name]\n", 3), ("[ok]\n\u200b\n", 2)]:
        bad = tmp_path / f"bad{line}{len(text)}.txt"
        bad.write_text(text, encoding="utf-8")
        with pytest.raises(ModerationError, match=f"{bad.name}:{line}:"):
            Moderator.from_config("both", words_file=bad)
    with pytest.raises(ModerationError, match="missing.txt"):
        Moderator.from_config("both", words_file=tmp_path / "missing.txt")


def test_classifier_from_file_and_module(tmp_path, monkeypatch):
    (tmp_path / "clf_file.py").write_text(
        "def check(text, stage):\n    return 'pineapple' in text\n", encoding="utf-8")
    spec = f"{tmp_path / 'clf_file.py'}:check"
    m = Moderator.from_config("both", classifier=spec)
    assert m.check_input("pineapple pizza") == Verdict(f"classifier:{spec}", "pineapple pizza", "input")
    assert m.check_input("plain pizza") is None
    assert m.check_input("违禁测试词").rule == "words:test"      # the words still apply

    (tmp_path / "my_clf_mod.py").write_text(
        "def rate(text, stage):\n"
        "    if 'durian' in text:\n        return 'fruit:' + stage\n    return None\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    m = Moderator.from_config("both", classifier="my_clf_mod:rate")
    assert m.check_input("durian!").rule == "classifier:fruit:input"
    gate = m.output_gate()
    assert gate.feed("Apples are fine. Durian") is None
    assert gate.feed(" smells. durian is banned. ok") == Verdict("classifier:fruit:output",
                                                                 "durian is banned.", "output")
    assert gate.safe_text == "Apples are fine. Durian smells."


def test_classifier_that_raises_fails_open(caplog):
    def broken(text, stage):
        raise RuntimeError("model server down")

    m = Moderator("both", classifier=broken, classifier_name="broken")
    with caplog.at_level(logging.WARNING, logger="mosslm.serve"):
        assert m.check_input("hello") is None
        gate = m.output_gate()
        assert gate.feed("Hello. World") is None and gate.finish() is None
    assert gate.safe_text == "Hello. World"
    assert "fail open" in caplog.text and "model server down" in caplog.text


def test_bad_classifier_specs(tmp_path):
    (tmp_path / "has_no_fn.py").write_text("x = 1\n", encoding="utf-8")
    (tmp_path / "explodes.py").write_text("raise ImportError('nope')\n", encoding="utf-8")
    cases = [
        (f"{tmp_path / 'has_no_fn.py'}:check", "has no 'check'"),
        (f"{tmp_path / 'has_no_fn.py'}:x", "not callable"),
        (f"{tmp_path / 'explodes.py'}:check", "failed to load"),
        (f"{tmp_path / 'absent.py'}:check", "not found"),
        ("no_such_module_for_mosslm_tests:check", "cannot import"),
        ("json:no_such_function", "has no 'no_such_function'"),
        ("json:", "bad moderation classifier spec"),
        ("no-such-entry-point", "mosslm.moderation"),
    ]
    for spec, message in cases:
        with pytest.raises(ModerationError, match=message):
            Moderator.from_config("both", classifier=spec)


def test_block_message():
    assert block_message("zh") == "抱歉，这个请求不符合使用规范，无法回答。"
    assert block_message("zh-CN") == block_message("zh")
    assert block_message("en") == block_message("fr") == block_message("") == (
        "Sorry, I can't help with that request: it goes against the usage policy.")


def test_a_long_reply_checks_fast(both):
    text = ("The weather is nice today, and 3.14 is pi. 今天天气很好，我们一起学习语言模型。" * 200)[:10000]
    both.check_input(text)
    start = time.perf_counter()
    for _ in range(5):
        assert both.check_input(text) is None
    assert (time.perf_counter() - start) / 5 < 0.01
    gate = both.output_gate()
    for i in range(0, len(text), 4):
        assert gate.feed(text[i:i + 4]) is None
    assert gate.finish() is None and gate.safe_text == text
