"""The local knowledge base behind the Search plugin (SQLite FTS5, real files)."""

import json
import sqlite3

import pytest

from mosslm import protocol
from mosslm.plugins import kb
from mosslm.plugins.registry import BUILTINS, run_commands


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("MOSSLM_HOME", str(tmp_path / "home"))
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "greatwall.md").write_text("# 长城\n\n长城是中国古代的军事防御工程，总长度超过两万公里。\n\n明长城保存得最完整。\n", encoding="utf-8")
    (docs / "eiffel.txt").write_text("The Eiffel Tower is a wrought-iron tower in Paris. It is 330 metres tall.\n")
    (docs / "panda.html").write_text("<html><head><title>Pandas</title><script>var x='bamboo trap';</script></head>"
                                     "<body><p>The giant panda lives in central China and eats bamboo.</p></body></html>")
    (docs / "facts.jsonl").write_text(json.dumps({"title": "西湖", "url": "https://example.org/xihu",
                                                  "text": "西湖位于杭州，是著名的风景名胜区。"}, ensure_ascii=False) + "\n",
                                      encoding="utf-8")
    return docs


def test_add_and_search_in_both_languages(home):
    counts = kb.add("t", [str(home)])
    assert counts == {"added": 4, "replaced": 0, "unchanged": 0, "chunks": 4}
    assert kb.search("t", "长城有多长？")[0].title == "长城"
    assert kb.search("t", "How tall is the Eiffel Tower?")[0].text.startswith("The Eiffel Tower")
    hit = kb.search("t", "杭州的西湖")[0]
    assert (hit.title, hit.url) == ("西湖", "https://example.org/xihu")
    panda = kb.search("t", "What do pandas eat?")
    assert "script" not in panda[0].text and "trap" not in panda[0].text
    assert kb.search("t", "量子色动力学") == []


def test_a_snippet_leads_with_the_sentence_that_holds_the_query(home, tmp_path):
    """Query-focused snippets: sentences ordered by the IDF weight of the query terms they hold, so the
    answering sentence comes first; a sentence's words all stay, and equal weights keep the page's order."""
    page = tmp_path / "canal.txt"
    page.write_text("The Grand Canal is the longest canal in the world. It links Beijing and Hangzhou. "
                    "Construction of the Grand Canal began in the fifth century BC.\n", encoding="utf-8")
    kb.add("t", [str(home), str(page)])
    hit = kb.search("t", "When did construction of the Grand Canal begin?")[0]
    assert hit.text.startswith("Construction of the Grand Canal began")
    assert sorted(kb.sentences(hit.text)) == sorted(kb.sentences(page.read_text()))
    assert kb.search("t", "Grand Canal")[0].text.startswith("The Grand Canal is the longest")
    # "the" is in every page, so it weighs next to nothing against a rare word
    assert kb.search("t", "the the the Beijing")[0].text.startswith("It links Beijing")
    zh = tmp_path / "运河.txt"
    zh.write_text("京杭大运河是世界上最长的运河。它连接北京和杭州。大运河始建于春秋时期。\n", encoding="utf-8")
    kb.add("t", [str(zh)])
    assert kb.search("t", "大运河什么时候始建？")[0].text.startswith("大运河始建于春秋时期。京杭大运河")


def test_re_adding_a_changed_file_replaces_its_chunks(home):
    kb.add("t", [str(home)])
    assert kb.add("t", [str(home)])["unchanged"] == 4
    (home / "eiffel.txt").write_text("The Eiffel Tower was repainted in a golden colour.\n")
    counts = kb.add("t", [str(home / "eiffel.txt")])
    assert counts["replaced"] == 1
    assert "golden" in kb.search("t", "Eiffel Tower")[0].text
    assert all("330" not in hit.text for hit in kb.search("t", "330 metres tall"))
    db = sqlite3.connect(kb.kb_path("t"))
    assert db.execute("SELECT count(*) FROM chunks").fetchone()[0] == db.execute("SELECT count(*) FROM chunks_fts").fetchone()[0] == 4


def test_bad_input_is_reported(home, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"title": "no text"}\n')
    with pytest.raises(kb.KBError, match="bad.jsonl:2"):
        kb.add("t", [str(bad)])
    assert not kb.kb_path("t").exists()  # a failed first add leaves no empty knowledge base
    with pytest.raises(kb.KBError, match="no knowledge base"):
        kb.search("t", "x")
    with pytest.raises(kb.KBError, match="no knowledge base"):
        kb.search("missing", "x")
    with pytest.raises(kb.KBError, match="unsupported"):
        kb.add("t", [__file__])  # a .py file


def test_search_plugin_blocks_number_across_calls(home, monkeypatch):
    kb.add("t", [str(home)])
    monkeypatch.setenv("MOSSLM_KB", "t")
    results = run_commands([protocol.Command("Search", "长城"), protocol.Command("Search", "panda bamboo"),
                            protocol.Command("Search", "量子色动力学")], BUILTINS)
    assert results.startswith('Search("长城") =>\n<|1|>: "# 长城 长城是中国古代的军事防御工程')
    assert 'Search("panda bamboo") =>\n<|2|>: "The giant panda' in results
    assert results.endswith('Search("量子色动力学") =>\nNo result.\n')
    for line in results.splitlines():
        if line.startswith("<|"):
            assert len(line) <= 400 + 10


def test_citations_map_back_to_titles_and_urls(home, monkeypatch):
    import io

    from mosslm.agent import Agent
    from mosslm.chat import answer
    from mosslm.engine import SamplingParams
    from test_plugins import Scripted

    kb.add("t", [str(home)])
    monkeypatch.setenv("MOSSLM_KB", "t")
    gen = Scripted([' 查一下。<eot>\n<|Commands|>: Search("长城"), Search("西湖 杭州")',
                    " 长城很长<sup><|1|></sup>，西湖在杭州<sup><|2|></sup>。"])
    agent = Agent(gen, preset="mosslm", params=SamplingParams(temperature=0.0))
    agent.set_plugins(["Search"])
    out = io.StringIO()
    reply = answer(agent, "长城和西湖", out, notes=io.StringIO())
    assert reply == "长城很长<sup><|1|></sup>，西湖在杭州<sup><|2|></sup>。"
    lines = out.getvalue().splitlines()
    assert lines[-2].startswith("[1] 长城 file://") and lines[-1] == "[2] 西湖 https://example.org/xihu"
    assert protocol.citations(reply) == [1, 2]


def make_pdf(pages: list[list[str]], title: str | None = None) -> bytes:
    """A minimal valid PDF written by hand: Helvetica text lines per page, a real xref table."""
    kids = " ".join(f"{4 + 2 * i} 0 R" for i in range(len(pages)))
    objs = ["<< /Type /Catalog /Pages 2 0 R >>", f"<< /Type /Pages /Kids [{kids}] /Count {len(pages)} >>",
            "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    for i, lines in enumerate(pages):
        ops = "BT /F1 12 Tf 14 TL 72 720 Td " + " ".join(f"({line}) Tj T*" for line in lines) + " ET"
        objs.append("<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
                    f"/Resources << /Font << /F1 3 0 R >> >> /Contents {5 + 2 * i} 0 R >>")
        objs.append(f"<< /Length {len(ops)} >>\nstream\n{ops}\nendstream")
    if title:
        objs.append(f"<< /Title ({title}) >>")
    out, offsets = b"%PDF-1.4\n", []
    for number, body in enumerate(objs, 1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n{body}\nendobj\n".encode("latin-1")
    xref = len(out)
    out += f"xref\n0 {len(objs) + 1}\n0000000000 65535 f \n".encode()
    out += "".join(f"{offset:010d} 00000 n \n" for offset in offsets).encode()
    info = f" /Info {len(objs)} 0 R" if title else ""
    return out + f"trailer\n<< /Size {len(objs) + 1} /Root 1 0 R{info} >>\nstartxref\n{xref}\n%%EOF\n".encode()


PAGES = [["The Moss Lake Observatory was founded in 1987.", "It studies alpine mosses above the tree line."],
         ["Its archive holds eleven thousand lichen samples.", "Visitors may tour it on Saturdays."]]


def test_pdf_is_indexed_with_title_and_pages(home):
    (home / "report.pdf").write_bytes(make_pdf(PAGES, title="Moss Lake Report"))
    (home / "notitle.pdf").write_bytes(make_pdf([["Glacier Survey 2020", "The glacier retreated forty metres."]]))
    counts = kb.add("t", [str(home)])
    assert counts["added"] == 6
    hit = kb.search("t", "When was the Moss Lake Observatory founded?")[0]
    assert hit.title == "Moss Lake Report" and "founded in 1987" in hit.text
    assert hit.url == (home / "report.pdf").resolve().as_uri()
    assert "lichen samples" in kb.search("t", "how many lichen samples")[0].text
    assert kb.search("t", "glacier retreated")[0].title == "Glacier Survey 2020"  # first line, no metadata title
    (home / "big.pdf").write_bytes(make_pdf(PAGES * 4))
    [(title, _, text)] = kb.read_documents(home / "big.pdf")
    pieces = kb.chunk(text)
    assert title == PAGES[0][0] and len(pieces) > 1
    assert {line for piece in pieces for line in piece.split("\n")} == {" ".join(page) for page in PAGES}  # whole pages


def _snapshot(name: str) -> list[tuple]:
    db = sqlite3.connect(kb.kb_path(name))
    try:
        return [db.execute(f"SELECT * FROM {t} ORDER BY rowid").fetchall() for t in ("files", "chunks", "chunks_fts")]
    finally:
        db.close()


def test_unreadable_pdfs_are_refused_and_nothing_is_half_added(home, tmp_path):
    import pypdf

    kb.add("t", [str(home)])
    before = _snapshot("t")
    good = tmp_path / "a_good.pdf"
    good.write_bytes(make_pdf(PAGES, title="Moss Lake Report"))
    truncated = tmp_path / "b_truncated.pdf"
    truncated.write_bytes(make_pdf(PAGES)[:600])
    (home / "eiffel.txt").write_text("The Eiffel Tower was repainted in a golden colour.\n")  # a replacement too
    with pytest.raises(kb.KBError, match=r"b_truncated.pdf: cannot read PDF: .*truncated or corrupt"):
        kb.add("t", [str(good), str(home / "eiffel.txt"), str(truncated)])
    assert _snapshot("t") == before
    assert kb.search("t", "Moss Lake Observatory") == []

    scan = tmp_path / "scan.pdf"
    scan.write_bytes(make_pdf([[], []]))  # pages without any text, as a scanned document
    with pytest.raises(kb.KBError, match="no text layer.*OCR"):
        kb.add("t", [str(good), str(scan)])
    locked = tmp_path / "locked.pdf"
    writer = pypdf.PdfWriter(clone_from=good)
    writer.encrypt(user_password="secret", algorithm="RC4-128")
    writer.write(locked)
    with pytest.raises(kb.KBError, match="locked.pdf: cannot read PDF: it is encrypted with a password"):
        kb.add("t", [str(good), str(locked)])
    assert _snapshot("t") == before


def _heldout_hits(db, field: str) -> dict[str, list[bool]]:
    docs = {(d["topic"], d["lang"]): d for d in map(json.loads, kb.HANDBOOK.read_text(encoding="utf-8").splitlines())}
    questions = [json.loads(line) for line in kb.HANDBOOK.with_name("questions.jsonl").read_text(encoding="utf-8").splitlines()]
    found: dict[str, list[bool]] = {"zh": [], "en": []}
    for q in questions:
        if q["split"] != "heldout":
            continue
        doc = docs[(q["topic"], q["lang"])]
        hits = kb.search(db, q[field], k=3)
        found[q["lang"]].append(any(h.title == doc["title"] and q["answer"] in h.text for h in hits))
    return found


def test_bundled_handbook_answers_heldout_questions_in_the_top_3(tmp_path):
    """The acceptance bar: the right passage in the top 3 for >= 90% of held-out bilingual questions."""
    db = tmp_path / "handbook.sqlite"
    kb.build(db, [str(kb.HANDBOOK)])
    for field in ("question", "query"):
        for lang, hits in _heldout_hits(db, field).items():
            assert len(hits) >= 150, (lang, len(hits))
            assert sum(hits) / len(hits) >= 0.90, (field, lang, sum(hits) / len(hits))


def test_default_kb_starts_with_the_handbook_and_keeps_it(home):
    assert not kb.kb_path("default").exists()
    assert kb.search("default", "长江有多长？")[0].title == "长江"
    kb.add("default", [str(home / "eiffel.txt")])
    assert kb.search("default", "How tall is the Eiffel Tower?")[0].text.startswith("The Eiffel Tower")
    assert kb.search("default", "How long is the Yangtze River?")[0].title == "The Yangtze River"
