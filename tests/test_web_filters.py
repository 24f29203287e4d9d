"""Boilerplate removal, repeated-line removal and quality filters, measured on the generated labelled corpus.

The corpus (mosslm/data/web/labelled.py) labels every line of every page "body" or "boilerplate"; these tests
run the filters on the pages' text and compare what they keep with the labels, line by line.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from mosslm.data.pii import mask_pii
from mosslm.data.web.boilerplate import BoilerplateConfig, strip_boilerplate
from mosslm.data.web.document import Document, Dropped
from mosslm.data.web.labelled import NEAR_DUP_MIN_JACCARD, generate, jaccard
from mosslm.data.web.quality import QualityConfig, quality_filter
from mosslm.data.web.repeated import RepeatedLines, RepeatedLinesConfig

JUNK_RULES = {"spam": "quality.spam_words", "symbols": "quality.symbols", "lorem": "quality.lorem_ipsum",
              "javascript": "quality.javascript"}


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[list[dict], dict[str, dict], Path]:
    out = generate(tmp_path_factory.mktemp("labelled"), seed=0, docs=200)
    pages = _read(out / "pages.jsonl")
    labels = {rec["id"]: rec for rec in _read(out / "labels.jsonl")}
    return pages, labels, out


def _doc(page: dict) -> Document:
    return Document(id=page["id"], text=page["text"], source="pages.jsonl", url=page["url"])


def _clean(pages: list[dict]) -> tuple[dict[str, list[str]], list[Document]]:
    """Kept lines per page after strip_boilerplate and RepeatedLines fitted on the whole corpus."""
    stripped = []
    kept: dict[str, list[str]] = {p["id"]: [] for p in pages}
    for page in pages:
        result = strip_boilerplate(_doc(page), BoilerplateConfig())
        if isinstance(result, Document):
            stripped.append(result)
    repeated = RepeatedLines(RepeatedLinesConfig())
    repeated.fit(stripped)
    docs = []
    for doc in stripped:
        result = repeated.apply(doc)
        if isinstance(result, Document):
            kept[doc.id] = [line for line in result.text.split("\n") if line.strip()]
            docs.append(result)
    return kept, docs


@pytest.fixture(scope="module")
def cleaned(corpus):
    pages, _, _ = corpus
    return _clean(pages)


def test_kept_body_lines_have_precision_and_recall_of_at_least_95_percent_per_language(corpus, cleaned, capsys):
    pages, labels, _ = corpus
    kept, _ = cleaned
    tally: dict[str, Counter] = {}
    for page in pages:
        label = labels[page["id"]]
        if label["junk"]:
            continue
        body = Counter(line for line, tag in label["lines"] if tag == "body")
        got = Counter(kept[page["id"]])
        t = tally.setdefault(label["lang"], Counter())
        t["true_pos"] += sum((body & got).values())
        t["kept"] += sum(got.values())
        t["body"] += sum(body.values())
    assert set(tally) == {"zh", "en", "mixed"}
    with capsys.disabled():
        for lang, t in sorted(tally.items()):
            print(f"\n{lang}: line precision {t['true_pos'] / t['kept']:.4f}  recall {t['true_pos'] / t['body']:.4f}"
                  f"  ({t['body']} body lines, {t['kept']} kept)")
    for lang, t in tally.items():
        assert t["true_pos"] / t["kept"] >= 0.95, lang
        assert t["true_pos"] / t["body"] >= 0.95, lang


def test_every_cut_line_names_its_rule(cleaned):
    _, docs = cleaned
    rules = Counter(rule for doc in docs for rule, _ in doc.removed)
    for rule in ("boilerplate.link_list", "boilerplate.related", "boilerplate.widget", "boilerplate.footer",
                 "boilerplate.ad", "boilerplate.meta", "boilerplate.nav_bar", "boilerplate.breadcrumb",
                 "repeated.line"):
        assert rules[rule] > 0, rule
    assert all(rule.startswith(("boilerplate.", "repeated.")) for rule in rules)
    assert all(d.signals["boilerplate"]["lines_cut"] == sum(1 for r, _ in d.removed if r.startswith("boil"))
               for d in docs)


ZH_PAGE = """首页 | 国内 | 国际 | 财经 | 体育 | 科技
当前位置：首页 > 财经 > 正文
南京推进集成电路产业集聚发展
2026-03-12 10:21 来源：江南日报网
本报讯（记者王建国）近日，南京规模以上工业增加值同比增长8.5%，增速比上年同期加快2个百分点。
这段视频被网友分享到朋友圈后，很快引发了热烈讨论。市场监管部门提醒，部分商家打着“限时优惠”的旗号诱导消费。
限时优惠！保健茶全场五折，点击购买立享包邮，数量有限，先到先得。
X 关闭
分享到：微信 微博 QQ空间
相关阅读
南京发布新能源汽车产业发展行动方案
杭州前三季度进出口总额同比增长6.1%
一季度合肥经济运行稳中向好
（责任编辑：李晓梅）
版权所有 © 2026 江南日报网 未经授权禁止转载"""


def test_chinese_page_keeps_its_article_and_names_each_cut():
    doc = Document("p1", ZH_PAGE, "x.txt")
    result = strip_boilerplate(doc, BoilerplateConfig())
    assert isinstance(result, Document)
    assert result.text.split("\n") == ZH_PAGE.split("\n")[2:3] + ZH_PAGE.split("\n")[4:6]
    rules = {line: rule for rule, line in doc.removed}
    assert rules["X 关闭"] == "boilerplate.widget"
    assert rules["相关阅读"] == rules["一季度合肥经济运行稳中向好"] == "boilerplate.related"
    assert rules["（责任编辑：李晓梅）"] == rules["版权所有 © 2026 江南日报网 未经授权禁止转载"] == "boilerplate.footer"
    assert rules["限时优惠！保健茶全场五折，点击购买立享包邮，数量有限，先到先得。"] == "boilerplate.ad"
    assert rules["首页 | 国内 | 国际 | 财经 | 体育 | 科技"] == "boilerplate.nav_bar"
    assert rules["当前位置：首页 > 财经 > 正文"] == "boilerplate.breadcrumb"
    assert rules["2026-03-12 10:21 来源：江南日报网"] == "boilerplate.meta"


def test_english_link_list_is_cut_but_the_title_under_a_sidebar_stays():
    text = """Storm closes schools across the valley
Council approves new bus lanes for the city centre
Local bakery wins national award
Leeds bets on offshore wind to revive its economy
On Tuesday, officials in Leeds said exports had risen 12.5% compared with the same period last year.
Share this article
Read more
Why tourism is booming in Cork
Can drone delivery live up to the hype?
© 2026 Harbor Post. All rights reserved."""
    doc = Document("p2", text, "x.txt")
    result = strip_boilerplate(doc, BoilerplateConfig())
    assert isinstance(result, Document)
    assert result.text.split("\n") == text.split("\n")[3:5]
    assert Counter(rule for rule, _ in doc.removed) == {"boilerplate.link_list": 3, "boilerplate.widget": 1,
                                                       "boilerplate.related": 3, "boilerplate.footer": 1}


ARTICLE_LINES_THAT_MENTION_FURNITURE = [
    "市民可拨打举报电话12345反映问题，相关部门承诺24小时内回复。",
    "该报责任编辑王某在接受采访时表示，稿件经过了三轮核实。",
    "不少网友将视频分享到朋友圈，评论区里一片叫好。",
    "监管部门提醒，“限时优惠”“免费领取”等宣传语背后可能暗藏陷阱。",
    "2025年，该书的版权所有者将作品授权给了一家影视公司。",
    "一季度，全市广告行业营业收入同比增长7.2%。",
    "By the end of the year, the city plans to open 20 new libraries.",
    "Advertisement spending in the region rose by 12% last year, the report said.",
    "The company updated its privacy policy after the breach was discovered.",
    "Sponsored by the city council, the festival drew 20,000 visitors.",
    "Share prices rose 3% on Monday.",
    "Read more about the plan on the council's website, officials said.",
]


def test_article_sentences_that_mention_furniture_words_are_kept():
    for line in ARTICLE_LINES_THAT_MENTION_FURNITURE:
        doc = Document("h", line, "x")
        result = strip_boilerplate(doc, BoilerplateConfig())
        assert isinstance(result, Document) and result.text == line, (line, doc.removed)


def test_link_list_minimum_run_is_configurable():
    text = "Home\nWorld\nBusiness\nThe council met on Tuesday and agreed the budget after a long debate."
    assert strip_boilerplate(Document("a", text, "x"), BoilerplateConfig()).text.startswith("The council")
    kept = strip_boilerplate(Document("b", text, "x"), BoilerplateConfig(link_list_min_run=4))
    assert kept.text.startswith("Home")


def test_a_page_of_nothing_but_furniture_is_dropped_as_empty():
    result = strip_boilerplate(Document("p3", "X 关闭\n分享到：微信 微博\n返回顶部\n版权所有 © 2026 海西网", "x"),
                               BoilerplateConfig())
    assert isinstance(result, Dropped) and result.rule == "boilerplate.empty"


def _site_doc(i: int, host: str, lines: list[str]) -> Document:
    return Document(f"d{i}", "\n".join(lines), "shard.jsonl", url=f"https://www.{host}/a/{i}.html")


def test_lines_repeated_on_min_docs_pages_of_one_site_are_cut():
    slogan = "信息周刊 · 专业 深度 有温度"
    bodies = ["春天的第一场雨落在江南小镇。", "夏天的午后，孩子们在河边捉鱼。", "秋天到了，果园里挂满了柿子。"]
    docs = [_site_doc(i, "zhoukan.cn", [bodies[i], slogan]) for i in range(3)]
    other = _site_doc(9, "other.cn", ["另一家网站的正文。", slogan])
    rep = RepeatedLines(RepeatedLinesConfig(min_docs=3))
    rep.fit(docs + [other])
    assert rep.apply(docs[0]).text == bodies[0]
    assert docs[0].removed == [("repeated.line", slogan)]
    assert rep.apply(other).text == "另一家网站的正文。\n" + slogan  # seen twice on other sites, once here
    strict = RepeatedLines(RepeatedLinesConfig(min_docs=4))
    strict.fit(docs)
    assert slogan in strict.apply(docs[1]).text


def test_repeated_lines_normalise_digits_and_punctuation_and_can_empty_a_page():
    docs = [_site_doc(i, "x.com", [f"Updated 2026-0{i + 1}-01 | Harbor Post"]) for i in range(3)]
    rep = RepeatedLines()
    rep.fit(docs)
    result = rep.apply(docs[2])
    assert isinstance(result, Dropped) and result.rule == "repeated.empty"
    with pytest.raises(RuntimeError, match="before fit"):
        RepeatedLines().apply(docs[0])


def test_quality_keeps_every_clean_body_and_records_its_measurements(corpus):
    pages, labels, _ = corpus
    dropped = []
    for page in pages:
        label = labels[page["id"]]
        if label["junk"]:
            continue
        body = "\n".join(line for line, tag in label["lines"] if tag == "body")
        doc = Document(page["id"], body, "pages.jsonl")
        result = quality_filter(doc, QualityConfig())
        if isinstance(result, Dropped):
            dropped.append((page["id"], result.rule, result.detail))
        assert {"chars", "cjk_share", "punct_line_share", "dup_ngram", "spam_share"} <= set(doc.signals["quality"])
    assert dropped == []


def test_quality_drops_generated_junk_with_the_right_rule(corpus):
    pages, labels, _ = corpus
    seen = Counter()
    for page in pages:
        kind = labels[page["id"]]["junk"]
        if not kind:
            continue
        result = quality_filter(_doc(page), QualityConfig())
        assert isinstance(result, Dropped), (kind, page["text"][:80])
        lang = labels[page["id"]]["lang"]
        expected = JUNK_RULES.get(kind) or ("quality.min_chars" if lang == "zh" else "quality.min_words")
        assert result.rule == expected, (kind, result.rule, result.detail)
        seen[kind] += 1
    assert set(seen) == {"spam", "symbols", "short", "lorem", "javascript"}


def test_quality_rules_for_repetition_and_thresholds_are_configurable():
    line = "今天的天气非常好，我们一起去公园散步吧，公园里的花都开了，大家都很开心。"
    repeated = Document("r", "\n".join([line] * 6), "x", lang="zh")
    assert quality_filter(repeated, QualityConfig()).rule == "quality.dup_lines"
    assert quality_filter(repeated, QualityConfig(max_dup_line_share=1.0, max_dup_line_char_share=1.0,
                                                  top_ngram_max=(1.0, 1.0, 1.0))).rule == "quality.dup_ngram"
    strict = quality_filter(Document("s", line * 3, "x"), QualityConfig(min_chars=500))
    assert strict.rule == "quality.min_chars" and "< 500" in strict.detail
    undecided = Document("t", line, "x")
    quality_filter(undecided, QualityConfig())
    assert undecided.signals["quality"]["lang"] == "zh" and undecided.signals["quality"]["chars"] == len(line)


def _english_lines(n_lines: int, words_per_line: int, end: str = ".", with_function_words: bool = True,
                   seed: int = 0) -> list[str]:
    """Distinct English-looking lines with function words (no repeated n-grams to speak of)."""
    rng = random.Random(seed)
    content = ["river", "council", "budget", "teacher", "harbor", "winter", "factory", "garden", "station",
               "museum", "market", "bridge", "library", "doctor", "farmer", "engine", "village", "signal"]
    glue = ["the", "of", "and", "to", "with", "in", "for", "that"]
    pools = glue if with_function_words else content
    return [" ".join(rng.choice(content if k % 2 else pools) for k in range(words_per_line)).capitalize() + end
            for _ in range(n_lines)]


@pytest.mark.parametrize("text, lang, rule", [
    ("\n".join(_english_lines(8, 14)), "zh", "quality.cjk_share"),  # labelled zh, but English
    ("\n".join(_english_lines(12, 10, with_function_words=False)), "en", "quality.stopwords"),
    ("\n".join("• " + line for line in _english_lines(12, 10, end="")), "en", "quality.bullet_lines"),
    ("\n".join(_english_lines(12, 10, end="")), "en", "quality.punct_lines"),
    ("\n".join(f"function step{i}(state) {{ return state.value + {i}; }}" for i in range(20)), "en",
     "quality.curly_brackets"),
])
def test_each_quality_rule_drops_what_it_is_for(text, lang, rule):
    result = quality_filter(Document("q", text, "x", lang=lang), QualityConfig())
    assert isinstance(result, Dropped) and result.rule == rule, (result.rule if isinstance(result, Dropped)
                                                                  else "kept", getattr(result, "detail", ""))


def test_clean_english_lines_pass_the_same_rules():
    assert isinstance(quality_filter(Document("c", "\n".join(_english_lines(8, 14)), "x"), QualityConfig()),
                      Document)


def test_generator_is_deterministic_and_seed_dependent(tmp_path):
    a = generate(tmp_path / "a", seed=3, docs=30)
    b = generate(tmp_path / "b", seed=3, docs=30)
    c = generate(tmp_path / "c", seed=4, docs=30)
    for name in ("pages.jsonl", "labels.jsonl"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
        assert (a / name).read_bytes() != (c / name).read_bytes()
    htmls = sorted(p.name for p in (a / "pages").iterdir())
    assert len(htmls) == 30
    assert all((a / "pages" / n).read_bytes() == (b / "pages" / n).read_bytes() for n in htmls)


def test_corpus_has_near_duplicates_distinct_same_topic_pages_mixed_pages_and_pii(corpus):
    pages, labels, out = corpus
    body = {i: "\n".join(x for x, tag in rec["lines"] if tag == "body") for i, rec in labels.items()}
    dups = [(i, rec["near_dup_of"]) for i, rec in labels.items() if rec["near_dup_of"]]
    assert len(dups) >= 15
    assert all(jaccard(body[a], body[b]) >= NEAR_DUP_MIN_JACCARD >= 0.8 and body[a] != body[b] for a, b in dups)
    related = {frozenset(p) for p in dups}
    by_topic: dict[str, list[str]] = {}
    for i, rec in labels.items():
        if rec["topic"] and rec["lang"] != "mixed":
            by_topic.setdefault(f"{rec['lang']}/{rec['topic']}", []).append(i)
    same_topic = [(a, b) for ids in by_topic.values() for k, a in enumerate(ids) for b in ids[k + 1:]
                  if frozenset((a, b)) not in related]
    assert len(same_topic) > 500
    similarities = [jaccard(body[a], body[b]) for a, b in same_topic[:800]]
    assert max(similarities) < 0.65 and sum(similarities) / len(similarities) < 0.35
    assert sum(rec["lang"] == "mixed" for rec in labels.values()) >= 10
    pii = [(i, kind, value) for i, rec in labels.items() for kind, value in rec["pii"]]
    assert {kind for _, kind, _ in pii} == {"EMAIL", "PHONE", "ID_CARD", "IP"}
    for i, kind, value in pii:
        assert value in body[i]
        masked, counts = mask_pii(body[i])
        assert value not in masked and counts[kind] >= 1
    page = next(p for p in pages if not labels[p["id"]]["junk"])
    text = (out / "pages" / f"{page['id']}.html").read_text(encoding="utf-8")
    assert "<nav>" in text and "<footer>" in text and "<article>" in text
