"""Deduplication of web text: exact and near-duplicates (MinHash LSH), with an index that persists.

The fixtures are generated here: short local-news articles in Chinese and English, all on the same topic
and built from the same phrases, so distinct articles share many n-grams; near-duplicates are made from
them with small edits (words changed, a sentence added). Jaccard similarities are measured exactly on the
character 5-gram sets, independently of the MinHash code.
"""

from __future__ import annotations

import json
import pickle
import random
import re
import subprocess
import sys
import unicodedata
from functools import cache
from pathlib import Path

import pytest

from mosslm.data.web.dedup import (
    EXACT,
    NEAR,
    DedupConfig,
    DedupIndex,
    DedupIndexError,
    deduplicate,
    lsh_bands_rows,
    signature,
)
from mosslm.data.web.document import Document, Dropped

REPO = Path(__file__).resolve().parents[1]

_EN = {
    "conn": ["However,", "Meanwhile,", "In addition,", "According to officials,", "As a result,", "", "", ""],
    "time": ["on Monday", "last week", "this morning", "in March", "after a long debate", "earlier this year",
             "on Friday evening", "during the summer", "yesterday", "at a public meeting"],
    "subj": ["the city council", "local residents", "the transport department", "a group of volunteers",
             "the mayor", "school teachers", "small business owners", "the health authority", "park rangers",
             "university researchers", "the fire brigade", "community leaders", "hospital staff",
             "the water company", "farmers near the river", "the police", "young families", "bus drivers"],
    "verb": ["announced", "discussed", "approved", "criticised", "reviewed", "welcomed", "postponed",
             "proposed", "questioned", "supported", "funded", "opened", "planned", "delayed", "praised"],
    "obj": ["a new cycling lane", "the budget for next year", "a plan to repair old bridges",
            "longer opening hours for the library", "a cleaner water supply", "the expansion of the park",
            "free bus rides for students", "a recycling programme", "cheaper housing near the station",
            "a festival in the old town", "new rules for street parking", "a night market",
            "more trees along the main road", "a study of air quality", "repairs to the swimming pool"],
    "place": ["in the north district", "near the harbour", "at the town hall", "in the old market square",
              "along the river", "on the east side", "in the suburbs", "downtown", "near the university"],
    "fact": ["The cost is estimated at {n} thousand dollars.", "About {n} people attended.",
             "The work should take {n} weeks.", "A survey found that {n} percent agreed.",
             "Officials expect {n} visitors.", "The plan affects {n} households."],
}
_ZH = {
    "conn": ["不过，", "与此同时，", "此外，", "据官员介绍，", "因此，", "", "", ""],
    "time": ["周一", "上周", "今天上午", "三月份", "经过长时间讨论后", "今年早些时候", "周五晚上", "夏天期间", "昨天",
             "在公开会议上"],
    "subj": ["市政府", "当地居民", "交通局", "志愿者团队", "市长", "学校老师", "小商户", "卫生部门", "公园管理处",
             "大学研究人员", "消防队", "社区负责人", "医院员工", "自来水公司", "河边的农民", "警方", "年轻家庭", "公交司机"],
    "verb": ["宣布了", "讨论了", "批准了", "批评了", "审议了", "欢迎", "推迟了", "提出了", "质疑了", "支持", "资助了",
             "开放了", "计划了", "延后了", "称赞了"],
    "obj": ["新的自行车道", "明年的预算", "修复老桥的方案", "延长图书馆开放时间", "更干净的供水", "中心公园的扩建",
            "学生免费乘车", "垃圾回收计划", "车站附近的廉价住房", "老城区的节日活动", "新的路边停车规定", "夜市",
            "主干道两旁增加树木", "空气质量研究", "游泳池的维修"],
    "place": ["在北区", "在港口附近", "在市政厅", "在老市场广场", "沿着河边", "在东区", "在郊区", "在市中心", "在大学附近"],
    "fact": ["预计费用约为{n}万元。", "大约有{n}人参加。", "工程预计需要{n}周。", "调查显示{n}%的人表示赞同。",
             "官员预计将有{n}名游客。", "该计划涉及{n}户家庭。"],
}
_WORDS = {"zh": ["新", "旧", "大型", "小型", "公共", "社区", "城市", "临时", "重要", "本地", "年度", "全部"],
          "en": ["new", "old", "large", "small", "public", "community", "city", "temporary", "important",
                 "local", "annual", "entire", "the", "a", "many"]}

Article = list[list[str]]        # sentences, each a list of words


def _sentence(rng: random.Random, lang: str) -> list[str]:
    table = _ZH if lang == "zh" else _EN
    if rng.random() < 0.3:
        fact = rng.choice(table["fact"]).format(n=rng.randint(2, 9999))
        return re.findall(r"[0-9]+|[^0-9]+", fact) if lang == "zh" else fact.split()
    parts = [rng.choice(table[slot]) for slot in ("conn", "time", "subj", "place", "verb", "obj")]
    conn, time, subj, place, verb, obj = parts
    if lang == "zh":
        return [w for w in (conn, time, subj, place, verb, obj) if w] + ["。"]
    words = f"{conn} {time} {subj} {verb} {obj} {place}.".split()
    return [words[0][0].upper() + words[0][1:]] + words[1:]


def _article(rng: random.Random, lang: str) -> Article:
    return [_sentence(rng, lang) for _ in range(rng.randint(6, 11))]


def _text(article: Article, lang: str) -> str:
    return "".join("".join(s) for s in article) if lang == "zh" else " ".join(" ".join(s) for s in article)


def _small_edit(article: Article, rng: random.Random, lang: str) -> Article:
    """Change one to three words, or add a sentence, or both (a web page edited or re-published)."""
    edited = [list(s) for s in article]
    kind = rng.choice(["words", "sentence", "both"])
    if kind in ("words", "both"):
        for _ in range(rng.randint(1, 3 if kind == "words" else 1)):
            sentence = rng.choice(edited)
            at = rng.randrange(len(sentence))
            sentence[at] = rng.choice([w for w in _WORDS[lang] if w != sentence[at]])
    if kind in ("sentence", "both"):
        edited.insert(rng.randint(0, len(edited)), _sentence(rng, lang))
    return edited


def _ngrams(text: str, n: int = 5) -> set[str]:
    norm = re.sub(r"[\W_]+", "", unicodedata.normalize("NFKC", text).lower())
    return {norm[i:i + n] for i in range(max(1, len(norm) - n + 1))}


def _jaccard(a: str, b: str) -> float:
    x, y = _ngrams(a), _ngrams(b)
    return len(x & y) / len(x | y)


@cache
def _distinct(lang: str, count: int = 300, seed: int = 7) -> tuple[str, ...]:
    rng = random.Random(f"{lang}-{seed}")
    articles: list[Article] = []
    for _ in range(count):
        article = _article(rng, lang)
        if articles and rng.random() < 0.3:      # a report on the same event: quotes 2-3 sentences of another
            source = rng.choice(articles)
            for at in rng.sample(range(len(article)), 3)[:rng.randint(2, 3)]:
                article[at] = rng.choice(source)
        articles.append(article)
    return tuple(_text(article, lang) for article in articles)


@cache
def _near_pairs(lang: str, count: int = 250) -> tuple[tuple[str, str, float], ...]:
    """(original, edited copy, their exact Jaccard) for `count` originals."""
    rng = random.Random(f"{lang}-near")
    pairs = []
    for _ in range(count):
        article = _article(rng, lang)
        original, edited = _text(article, lang), _text(_small_edit(article, rng, lang), lang)
        pairs.append((original, edited, _jaccard(original, edited)))
    return tuple(pairs)


def _doc(doc_id: str, text: str) -> Document:
    return Document(id=doc_id, text=text, source="test")


CFG = DedupConfig()


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_near_duplicates_with_small_edits_are_caught(tmp_path: Path, lang: str) -> None:
    pairs = _near_pairs(lang)
    with DedupIndex(tmp_path / "dedup.sqlite", CFG) as index:
        for number, (original, _, _) in enumerate(pairs):
            index.add(f"orig-{number}", signature(_doc(f"orig-{number}", original), CFG))
        index.commit()
        similar = [(number, edited) for number, (_, edited, j) in enumerate(pairs) if j >= CFG.threshold]
        caught = sum(index.match(f"edit-{number}", signature(_doc(f"edit-{number}", edited), CFG))
                     in ((NEAR, f"orig-{number}"), (EXACT, f"orig-{number}")) for number, edited in similar)
    assert len(similar) >= 150, f"the generator made only {len(similar)} pairs at Jaccard >= 0.8"
    assert caught / len(similar) >= 0.95, f"{lang}: caught {caught} of {len(similar)} near-duplicates"


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_distinct_documents_on_the_same_topic_are_kept(tmp_path: Path, lang: str) -> None:
    texts = _distinct(lang)
    shingles = [_ngrams(t) for t in texts[:150]]      # all pairs of half of them: enough, and fast
    closest = max(len(a & b) / len(a | b) for i, a in enumerate(shingles) for b in shingles[:i])
    assert 0.1 < closest < 0.6, f"the fixture should be same-topic but distinct (closest pair {closest:.2f})"
    with DedupIndex(tmp_path / "dedup.sqlite", CFG) as index:
        results = [deduplicate(_doc(f"{lang}-{n}", t), signature(_doc(f"{lang}-{n}", t), CFG), index)
                   for n, t in enumerate(texts)]
        wrongly_merged = [r for r in results if isinstance(r, Dropped)]
        assert len(index) == len(texts) - len(wrongly_merged)
    assert len(wrongly_merged) <= 0.01 * len(texts), [(r.rule, r.detail) for r in wrongly_merged]


def test_exact_duplicates_after_whitespace_and_case_changes_are_caught(tmp_path: Path) -> None:
    first = {"en": "The City Council approved a new cycling lane.\n\nIt opens in March.",
             "zh": "市政府批准了新的自行车道。\n预计三月份开放，费用约为300万元！"}
    variants = {"en": ["the city council   approved a NEW cycling lane. It opens in march",
                       "  The City Council approved a new cycling lane - it opens in March!  "],
                "zh": ["市政府 批准了 新的自行车道，预计三月份开放 费用约为300万元",
                       "市政府批准了新的自行车道。\u3000预计三月份开放；费用约为３００万元。"]}
    with DedupIndex(tmp_path / "dedup.sqlite", CFG) as index:
        for lang, text in first.items():
            index.add(lang, signature(_doc(lang, text), CFG))
        for lang, texts in variants.items():
            for n, text in enumerate(texts):
                assert index.match(f"{lang}-v{n}", signature(_doc(f"{lang}-v{n}", text), CFG)) == (EXACT, lang)
        other = "市政府批准了新的自行车道。预计四月份开放，费用约为300万元。"
        found = index.match("zh-other", signature(_doc("zh-other", other), CFG))
        assert found is None or found[0] != EXACT       # one character differs: not an exact duplicate


def test_a_duplicate_within_the_same_uncommitted_shard_is_caught(tmp_path: Path) -> None:
    original, edited, _ = next(p for p in _near_pairs("zh") if p[2] >= 0.9)
    with DedupIndex(tmp_path / "dedup.sqlite", CFG) as index:
        assert deduplicate(_doc("a", original), signature(_doc("a", original), CFG), index) is not None
        dropped = deduplicate(_doc("b", edited), signature(_doc("b", edited), CFG), index)
        assert isinstance(dropped, Dropped) and dropped.rule == NEAR and "near-duplicate of a" in dropped.detail
        again = deduplicate(_doc("c", f"  {original} "), signature(_doc("c", f"  {original} "), CFG), index)
        assert isinstance(again, Dropped) and again.rule == EXACT and "a" in again.detail
        assert len(index) == 1
    with DedupIndex(tmp_path / "dedup.sqlite", CFG) as index:       # closed without a commit: nothing kept
        assert len(index) == 0 and index.match("b", signature(_doc("b", edited), CFG)) is None


_FIRST_RUN = """
import json, os, sys
from pathlib import Path
from mosslm.data.web.dedup import DedupConfig, DedupIndex, signature
from mosslm.data.web.document import Document
shards = json.loads(Path(sys.argv[2]).read_text(encoding="utf-8"))
index = DedupIndex(Path(sys.argv[1]), DedupConfig())
for name, texts in shards.items():
    for n, text in enumerate(texts):
        doc = Document(id=f"{name}/{n}", text=text, source=name)
        index.add(doc.id, signature(doc, DedupConfig()))
    index.mark_done(name, {"kept": len(texts)})
    if name == "shard-a":
        index.commit()
os._exit(1)   # dies with shard-b added and marked done, but not committed
"""


def test_the_index_persists_across_runs_and_a_crash_loses_only_the_uncommitted(tmp_path: Path) -> None:
    pairs = _near_pairs("en")
    committed, lost = pairs[:40], pairs[40:80]
    shards = {"shard-a": [p[0] for p in committed], "shard-b": [p[0] for p in lost]}
    (tmp_path / "shards.json").write_text(json.dumps(shards), encoding="utf-8")
    path = tmp_path / "index" / "dedup.sqlite"
    run = subprocess.run([sys.executable, "-c", _FIRST_RUN, str(path), str(tmp_path / "shards.json")],
                         check=False, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert run.returncode == 1, run.stderr
    with DedupIndex(path, CFG) as index:
        assert index.done() == {"shard-a": {"kept": 40}}
        assert len(index) == 40
        for n, (original, edited, j) in enumerate(committed):
            assert index.match("new", signature(_doc("new", f" {original.lower()} "), CFG)) == (EXACT, f"shard-a/{n}")
            if j >= 0.9:
                assert index.match("new", signature(_doc("new", edited), CFG)) == (NEAR, f"shard-a/{n}")
        for original, _, _ in lost:
            assert index.match("new", signature(_doc("new", original), CFG)) is None


@pytest.mark.parametrize("changed", [{"ngram": 4}, {"num_perm": 64}, {"threshold": 0.7}, {"near": False}])
def test_an_index_made_with_other_settings_is_refused(tmp_path: Path, changed: dict) -> None:
    path = tmp_path / "dedup.sqlite"
    with DedupIndex(path, CFG) as index:
        index.add("a", signature(_doc("a", "some text"), CFG))
        index.commit()
    key = next(iter(changed))
    with pytest.raises(DedupIndexError, match=rf"{re.escape(str(path))}.*other settings.*{key}="):
        DedupIndex(path, DedupConfig(**changed))
    with DedupIndex(path, DedupConfig()) as index:      # the same settings still open it
        assert len(index) == 1


def test_a_file_that_is_not_an_index_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.sqlite"
    path.write_text("these are my notes, not a database\n" * 100)
    with pytest.raises(DedupIndexError, match=rf"{re.escape(str(path))}: not a dedup index"):
        DedupIndex(path, CFG)


def test_a_signature_is_small_picklable_and_depends_only_on_the_normalised_text() -> None:
    text = _distinct("zh")[0]
    sig = signature(_doc("x", text), CFG)
    assert len(sig.exact_key) == 16 and len(sig.minhash or b"") == 4 * CFG.num_perm
    assert len(pickle.dumps(sig)) < 800
    assert pickle.loads(pickle.dumps(sig)) == sig
    assert signature(_doc("y", " ".join(text)), CFG) == sig
    assert signature(_doc("z", _distinct("zh")[1]), CFG) != sig
    assert signature(_doc("e", "。，！ "), CFG).minhash is None       # nothing left to compare


@pytest.mark.parametrize("threshold", [0.5, 0.7, 0.8, 0.9])
def test_the_lsh_layout_makes_pairs_at_the_threshold_candidates(threshold: float) -> None:
    bands, rows = lsh_bands_rows(threshold, 128)
    assert bands * rows <= 128
    assert 1 - (1 - threshold ** rows) ** bands >= 0.99
    assert 1 - (1 - threshold ** (rows + 1)) ** (128 // (rows + 1)) < 0.99   # the fewest candidates that do


def test_bad_settings_are_refused_with_the_field_name() -> None:
    with pytest.raises(ValueError, match="dedup.threshold"):
        DedupConfig(threshold=1.5)
    with pytest.raises(ValueError, match="dedup.ngram"):
        DedupConfig(ngram=0)
