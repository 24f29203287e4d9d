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
