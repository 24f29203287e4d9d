"""Normalisation (normalize) and language identification (langid) of web documents for `moss data clean`."""

from __future__ import annotations

import pytest

from mosslm.data.web.document import Document, Dropped
from mosslm.data.web.langid import LanguageConfig, identify_language, script_shares
from mosslm.data.web.normalize import NormalizeConfig, normalize


def doc_of(text: str) -> Document:
    return Document(id="t:1", text=text, source="t.jsonl")


def normalized(text: str, **cfg) -> str:
    result = normalize(doc_of(text), NormalizeConfig(**cfg))
    assert isinstance(result, Document), result
    return result.text


# --- normalize -----------------------------------------------------------------------------------------------

def test_chinese_punctuation_stays_chinese():
    text = "他说：「今天下雨了，我们不去了。」你呢？好吧！（完）注意；明天见。"
    assert normalized(text) == text


def test_fullwidth_letters_and_digits_become_ascii_but_fullwidth_punctuation_does_not():
    assert normalized("型号ＡＢＣ－１２３ｘ，价格９９元！") == "型号ABC－123x，价格99元！"
    assert normalized("ＡＢＣ", fullwidth_to_halfwidth=False) == "ＡＢＣ"


def test_nfc_composes_but_compatibility_characters_are_not_folded():
    assert normalized("cafe\u0301 ") == "caf\u00e9"           # e + combining acute -> é
    assert normalized("ﬁle ① ㎏ ½") == "ﬁle ① ㎏ ½"           # what NFKC would rewrite stays


def test_control_and_zero_width_characters_go_but_tabs_and_newlines_stay():
    doc = normalize(doc_of("\ufeff零\u200b宽\u200d字符\x00\x07\u00ad。\n列1\t列2"), NormalizeConfig())
    assert doc.text == "零宽字符。\n列1\t列2"
    assert doc.signals["invisible_chars_removed"] == 6


def test_line_endings_spaces_and_blank_lines_are_unified():
    text = "  标题  \r\n\r\n\r\n\r\n第一段\u3000\u3000内容\rline\u00a0two   words\u2028last\t \n\n\n"
    assert normalized(text) == "标题\n\n第一段 内容\nline two words\nlast"


def test_a_document_with_nothing_visible_is_dropped_as_empty():
    result = normalize(doc_of("\u200b \n\t\r\n\u3000\ufeff"), NormalizeConfig())
    assert isinstance(result, Dropped) and result.rule == "normalize.empty"
    assert result.doc.id == "t:1"


def test_traditional_to_simplified_only_when_asked():
    text = "我們學習漢語，這個軟體很好用。"
    assert normalized(text) == text
    assert normalized(text, traditional_to_simplified=True) == "我们学习汉语，这个软体很好用。"
    # The Taiwan config with phrases also swaps the vocabulary (軟體 -> 软件).
    assert normalized(text, traditional_to_simplified=True, opencc_config="tw2sp") == "我们学习汉语，这个软件很好用。"


# --- language ID ---------------------------------------------------------------------------------------------

ZH = ("国家统计局今天发布数据显示，今年前十个月全国规模以上工业增加值同比增长百分之五点八，"
      "消费市场继续恢复，服务业保持较快增长，经济运行总体平稳。")
EN = ("The museum will reopen next month after a two-year renovation that added new galleries, "
      "a larger education centre and a rooftop garden open to all visitors.")
FR = "Le musée rouvrira le mois prochain après deux ans de travaux, avec de nouvelles salles et un jardin."
DE = "Das Museum öffnet nächsten Monat wieder, nach einer zweijährigen Renovierung mit neuen Räumen."
JA = "博物館は二年間の改修工事を終えて、来月から再び一般公開されることになりました。"


def identified(text: str, **cfg) -> Document | Dropped:
    return identify_language(doc_of(text), LanguageConfig(**cfg))


@pytest.mark.parametrize("text,lang", [(ZH, "zh"), (EN, "en")])
def test_chinese_and_english_are_kept_with_their_score(text, lang):
    doc = identified(text)
    assert isinstance(doc, Document), doc
    assert doc.lang == lang and doc.lang_score >= 0.8
    assert doc.text == text


def test_script_shares_are_recorded():
    doc = identified(ZH)
    assert doc.signals["cjk_share"] == 1.0 and doc.signals["latin_share"] == 0.0
    cjk, latin = script_shares("中文abcd")
    assert (cjk, latin) == (2 / 6, 4 / 6)
    assert script_shares("123 !!!") == (0.0, 0.0)


MIXED_ZH = ("今天我们讨论 large language models 的训练方法。研究人员发现，在 pretraining 阶段加入高质量的中文数据，"
            "模型的 reasoning ability 和 instruction following 都有明显提升。This is a key finding for bilingual models.")
MIXED_EN = ("The team released the new model last week. It was trained on a bilingual corpus, 包括大量中文网页和书籍, "
            "and the results show strong performance on both English and Chinese benchmarks. 中文能力明显提升。")


@pytest.mark.parametrize("text,main", [(MIXED_ZH, "zh"), (MIXED_EN, "en")])
def test_a_mixed_zh_en_document_stays_whole_and_is_routed_by_its_main_language(text, main):
    doc = identified(text)
    assert isinstance(doc, Document), doc
    assert doc.text == text  # never split
    assert doc.lang == main
    assert doc.signals["cjk_share"] >= 0.1 and doc.signals["latin_share"] >= 0.1
    assert doc.signals["lang_mixed"] is True
    assert doc.lang_score >= 0.5


@pytest.mark.parametrize("text,lang", [(FR, "fr"), (DE, "de"), (JA, "ja")])
def test_other_languages_are_dropped_or_kept_by_configuration(text, lang):
    dropped = identified(text)
    assert isinstance(dropped, Dropped) and dropped.rule == "langid.other"
    assert dropped.doc.lang == lang and f"lang={lang}" in dropped.detail
    kept = identified(text, others="keep")
    assert isinstance(kept, Document) and kept.lang == lang


def test_keep_chooses_the_languages():
    assert isinstance(identified(EN, keep=("zh",)), Dropped)
    assert identified(FR, keep=("zh", "en", "fr")).lang == "fr"


def test_a_text_the_model_is_unsure_of_is_dropped_for_low_score():
    result = identified("2026-12-01 12:30 | 123 456 789 | #### ++ ~~ 000")
    assert isinstance(result, Dropped) and result.rule == "langid.low_score", result
    assert result.doc.lang_score < 0.5
    assert isinstance(identified(EN, min_score=1.01), Dropped)  # the threshold is the config's


def test_unknown_settings_are_clear_errors():
    with pytest.raises(ValueError, match="language.others must be 'drop' or 'keep'"):
        LanguageConfig(others="route")
    with pytest.raises(ValueError, match="normalize.opencc_config 'zz2s' is not an OpenCC config"):
        NormalizeConfig(traditional_to_simplified=True, opencc_config="zz2s")
