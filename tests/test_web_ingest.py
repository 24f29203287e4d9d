"""Reading raw inputs (ingest) and extracting their text (extract) for `moss data clean`.

Every test writes real files of the format it reads into tmp_path; the malformed cases are the ones a crawl really
holds (a cut-off gzip, invalid UTF-8, a line that is not JSON, HTML without a body), and each must come out as a
BadRecord naming the file and the record while reading goes on.
"""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path

import pytest

from mosslm.data.web.document import BadRecord, Document, Dropped, RawRecord
from mosslm.data.web.extract import ExtractConfig, extract
from mosslm.data.web.ingest import IngestError, input_files, read_records

ZH_PARAGRAPHS = [
    "新华社北京12月1日电，今年全国秋粮收购工作进展顺利，各地粮食部门积极组织收购，农民售粮顺畅，市场运行总体平稳。",
    "据国家粮食和物资储备局介绍，截至目前，主产区各类粮食企业累计收购秋粮超过一亿吨，同比增加了一千多万吨。",
    "专家表示，今年秋粮丰收为稳定粮食市场奠定了坚实基础，下一步将继续做好收购服务，切实保护种粮农民的利益。",
]
EN_PARAGRAPHS = [
    "The city council approved a new plan on Monday to expand the public library network across three districts.",
    "Officials said the first two branches would open next spring, with longer opening hours and study rooms.",
    "Residents who attended the meeting welcomed the decision, although some asked for more funding for staff.",
]


def article_html(title: str, paragraphs: list[str], charset: str = "utf-8") -> str:
    body = "\n".join(f"<p>{p}</p>" for p in paragraphs)
    return (f'<!DOCTYPE html><html><head><meta charset="{charset}"><title>{title}</title></head><body>'
            '<nav><ul><li><a href="/">首页</a></li><li><a href="/news">新闻</a></li></ul></nav>'
            f'<article><h1>{title}</h1>{body}</article>'
            '<footer>Copyright 2026 Example News</footer></body></html>')


def records(path: Path, **kw) -> list[RawRecord | BadRecord]:
    return list(read_records(path, **kw))


def write_jsonl(path: Path, rows: list, opener=open) -> Path:
    with opener(path, "wt", encoding="utf-8") as f:
        for row in rows:
            f.write((row if isinstance(row, str) else json.dumps(row, ensure_ascii=False)) + "\n")
    return path


# --- input_files ---------------------------------------------------------------------------------------------

def test_input_files_walks_folders_sorted_and_keeps_only_known_formats(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / ".cache").mkdir()
    for name in ["b/z.jsonl.gz", "b/a.warc", "c.txt", "a.html", "notes.docx", "b/img.png", "d.parquet",
                 ".cache/old.jsonl", ".hidden.txt"]:
        (tmp_path / name).write_bytes(b"x")
    found = input_files([str(tmp_path)])
    assert [p.relative_to(tmp_path).as_posix() for p in found] == [
        "a.html", "b/a.warc", "b/z.jsonl.gz", "c.txt", "d.parquet"]
    # A file named directly is taken as given, and once even if its folder is named too.
    assert input_files([str(tmp_path / "c.txt"), str(tmp_path)])[0].name == "c.txt"
    assert len(input_files([str(tmp_path / "c.txt"), str(tmp_path)])) == 5


def test_input_files_rejects_a_missing_path_and_an_unknown_suffix(tmp_path):
    with pytest.raises(IngestError, match="nope.jsonl: no such file or folder"):
        input_files([str(tmp_path / "nope.jsonl")])
    (tmp_path / "report.docx").write_text("x")
    with pytest.raises(IngestError, match=r"report\.docx: unknown input format"):
        input_files([str(tmp_path / "report.docx")])
    assert issubclass(IngestError, ValueError)


# --- plain text and HTML files -------------------------------------------------------------------------------

def test_text_and_markdown_files_are_one_text_record_each(tmp_path):
    (tmp_path / "a.txt").write_text("第一行\n第二行\n", encoding="utf-8")
    (tmp_path / "b.md").write_bytes("\ufeff# Title\n\nBody text.".encode())  # a BOM is not text
    [a] = records(tmp_path / "a.txt")
    [b] = records(tmp_path / "b.md")
    assert (a.id, a.kind, a.content, a.source) == ("a.txt:1", "text", "第一行\n第二行\n", str(tmp_path / "a.txt"))
    assert (b.id, b.kind, b.content) == ("b.md:1", "text", "# Title\n\nBody text.")


def test_invalid_utf8_in_a_text_file_is_a_bad_record_naming_the_byte(tmp_path):
    path = tmp_path / "broken.txt"
    path.write_bytes("好的".encode() + b"\xff\xfe rest")
    [bad] = records(path)
    assert isinstance(bad, BadRecord)
    assert (bad.source, bad.record) == (str(path), "1")
    assert "invalid UTF-8 at byte 6" in bad.message
    assert str(bad).startswith(f"{path}: record 1: invalid UTF-8")


def test_html_file_is_one_html_record_decoded_by_its_declared_charset(tmp_path):
    page = article_html("秋粮收购", ZH_PARAGRAPHS, charset="gbk")
    (tmp_path / "gbk.htm").write_bytes(page.encode("gbk"))
    (tmp_path / "utf8.html").write_text(article_html("Library", EN_PARAGRAPHS), encoding="utf-8")
    [zh] = records(tmp_path / "gbk.htm")
    [en] = records(tmp_path / "utf8.html")
    assert (zh.id, zh.kind) == ("gbk.htm:1", "html")
    assert ZH_PARAGRAPHS[0] in zh.content
    assert EN_PARAGRAPHS[2] in en.content


# --- JSONL ---------------------------------------------------------------------------------------------------

def test_jsonl_records_take_the_text_field_url_and_meta(tmp_path):
    path = write_jsonl(tmp_path / "dump.jsonl", [
        {"text": "第一篇文章。", "url": "https://a.example/1", "lang_hint": "zh", "n": 3},
        {"content": "unused", "text": "Second article."},
    ])
    first, second = records(path)
    assert (first.id, first.kind, first.content, first.url) == ("dump.jsonl:1", "text", "第一篇文章。",
                                                                 "https://a.example/1")
    assert first.meta == {"lang_hint": "zh", "n": 3}
    assert (second.id, second.url, second.meta) == ("dump.jsonl:2", None, {"content": "unused"})
    [other] = records(path, text_field="content")[1:]
    assert other.content == "unused"


def test_jsonl_html_field_gives_html_records(tmp_path):
    path = write_jsonl(tmp_path / "pages.jsonl.gz", [{"html": "<p>x</p>", "url": "u"}, {"text": "plain"}],
                       opener=gzip.open)
    html, text = records(path, html_field="html")
    assert (html.kind, html.content, html.url) == ("html", "<p>x</p>", "u")
    assert (text.kind, text.content) == ("text", "plain")  # a record without the html field falls back to text


def test_malformed_jsonl_lines_are_bad_records_and_reading_goes_on(tmp_path):
    path = tmp_path / "mixed.jsonl"
    lines = [json.dumps({"text": "ok one"}).encode(),
             b'{"text": "not closed',
             json.dumps({"body": "no text field"}).encode(),
             b'{"text": "bad \xff byte"}',
             b"[1, 2]",
             json.dumps({"text": 42}).encode(),
             b"",
             json.dumps({"text": "ok two"}).encode()]
    path.write_bytes(b"\n".join(lines) + b"\n")
    out = records(path)
    assert [r.content for r in out if isinstance(r, RawRecord)] == ["ok one", "ok two"]
    assert [r.id for r in out if isinstance(r, RawRecord)] == ["mixed.jsonl:1", "mixed.jsonl:8"]
    bad = {r.record: r.message for r in out if isinstance(r, BadRecord)}
    assert set(bad) == {"2", "3", "4", "5", "6"}
    assert bad["2"].startswith("not JSON:")
    assert "field 'text' is missing" in bad["3"]
    assert bad["4"].startswith("invalid UTF-8 at byte")
    assert "not a JSON object" in bad["5"]
    assert "not a string but int" in bad["6"]
    assert all(r.source == str(path) for r in out)


def test_broken_gzip_keeps_the_records_before_the_break_and_the_next_file_is_read(tmp_path):
    rows = [json.dumps({"text": f"document number {i} " + "word " * 40}) for i in range(400)]
    whole = gzip.compress(("\n".join(rows) + "\n").encode())
    (tmp_path / "a_cut.jsonl.gz").write_bytes(whole[: len(whole) // 2])  # a download cut off halfway
    write_jsonl(tmp_path / "b_next.jsonl", [{"text": "the next file"}])
    out = [r for f in input_files([str(tmp_path)]) for r in read_records(f)]
    cut = [r for r in out if r.source.endswith("a_cut.jsonl.gz")]
    good = [r for r in cut if isinstance(r, RawRecord)]
    assert 0 < len(good) < 400
    assert [r.content for r in good] == [json.loads(x)["text"] for x in rows[: len(good)]]  # nothing garbled
    assert isinstance(cut[-1], BadRecord) and sum(isinstance(r, BadRecord) for r in cut) == 1
    assert f"broken gzip after record {len(good)}" in cut[-1].message
    assert out[-1].content == "the next file"


def test_a_file_that_is_not_gzip_at_all_is_one_bad_record(tmp_path):
    path = tmp_path / "fake.jsonl.gz"
    path.write_text('{"text": "plain, not compressed"}\n')
    [bad] = records(path)
    assert isinstance(bad, BadRecord) and "broken gzip after record 0" in bad.message


def test_reading_streams_so_memory_stays_bounded_by_one_record(tmp_path):
    import tracemalloc

    path = tmp_path / "big.jsonl.gz"
    line = json.dumps({"text": "x" * 300, "url": "https://big.example/"}) + "\n"
    with gzip.open(path, "wt", compresslevel=1) as f:
        f.write(line * 10_000)  # 3 MB of records
    tracemalloc.start()
    try:
        count = sum(1 for _ in read_records(path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count == 10_000
    assert peak < 1_000_000, f"peak {peak} bytes: the file was not streamed"


# --- parquet -------------------------------------------------------------------------------------------------

def test_parquet_rows_are_read_batch_by_batch_with_fields_url_and_meta(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = 2500  # more rows than one read batch, written as several row groups
    table = pa.table({"text": [f"row {i}" for i in range(n)], "url": [f"https://p.example/{i}" for i in range(n)],
                      "score": [i / 10 for i in range(n)]})
    path = tmp_path / "part-0.parquet"
    pq.write_table(table, path, row_group_size=1000)
    out = records(path)
    assert len(out) == n and all(isinstance(r, RawRecord) for r in out)
    assert (out[0].id, out[0].content, out[0].url, out[0].meta) == ("part-0.parquet:1", "row 0",
                                                                    "https://p.example/0", {"score": 0.0})
    assert (out[-1].id, out[-1].content) == ("part-0.parquet:2500", "row 2499")


def test_parquet_without_the_field_or_broken_is_a_bad_record(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": ["x"], "text": [None]}), tmp_path / "nulls.parquet")
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "nocol.parquet")
    (tmp_path / "junk.parquet").write_bytes(b"PAR1 this is not parquet")
    [null] = records(tmp_path / "nulls.parquet")
    assert isinstance(null, BadRecord) and null.record == "1" and "field 'text' is null" in null.message
    [nocol] = records(tmp_path / "nocol.parquet")
    assert isinstance(nocol, BadRecord) and "no column 'text'; columns: body" in nocol.message
    [junk] = records(tmp_path / "junk.parquet")
    assert isinstance(junk, BadRecord) and "not a readable parquet file" in junk.message


# --- WARC ----------------------------------------------------------------------------------------------------

def write_warc(path: Path, gz: bool) -> dict[str, str]:
    """A small crawl: two HTML responses (UTF-8, and GBK declared in the HTTP header), an image, a request."""
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    ids = {}
    with open(path, "wb") as f:
        writer = WARCWriter(f, gzip=gz)

        def response(url: str, content_type: str, payload: bytes) -> None:
            headers = StatusAndHeaders("200 OK", [("Content-Type", content_type)], protocol="HTTP/1.1")
            rec = writer.create_warc_record(url, "response", payload=io.BytesIO(payload), http_headers=headers)
            writer.write_record(rec)
            ids[url] = rec.rec_headers.get_header("WARC-Record-ID").strip("<>")

        response("https://en.example/library", "text/html; charset=utf-8",
                 article_html("Library", EN_PARAGRAPHS).encode("utf-8"))
        page = article_html("秋粮", ZH_PARAGRAPHS, charset="").replace('<meta charset="">', "")
        response("https://zh.example/grain", "text/html; charset=GBK", page.encode("gbk"))
        response("https://zh.example/logo.png", "image/png", b"\x89PNG\r\n\x1a\n....")
        writer.write_record(writer.create_warc_record("https://en.example/library", "request",
                                                      payload=io.BytesIO(b"GET /library HTTP/1.1\r\n\r\n")))
    return ids


@pytest.mark.parametrize("name,gz", [("crawl.warc", False), ("crawl.warc.gz", True)])
def test_warc_html_responses_become_html_records_with_url_and_record_id(tmp_path, name, gz):
    path = tmp_path / name
    ids = write_warc(path, gz)
    out = records(path)
    assert [r.url for r in out] == ["https://en.example/library", "https://zh.example/grain"]
    assert all(isinstance(r, RawRecord) and r.kind == "html" for r in out)
    assert [r.id for r in out] == [ids["https://en.example/library"], ids["https://zh.example/grain"]]
    assert out[0].id.startswith("urn:uuid:")
    assert ZH_PARAGRAPHS[1] in out[1].content  # decoded with the charset of the HTTP header
    assert out[1].meta["http_status"] == "200"


@pytest.mark.parametrize("inside", [0, 1, 2, 3])
@pytest.mark.parametrize("gz", [True, False])
def test_truncated_warc_keeps_the_whole_pages_before_the_break_then_reports_it(tmp_path, inside, gz):
    from warcio.archiveiterator import ArchiveIterator

    whole = tmp_path / ("whole.warc.gz" if gz else "whole.warc")
    write_warc(whole, gz=gz)
    complete = records(whole)
    with open(whole, "rb") as f:
        iterator = ArchiveIterator(f)
        starts = [iterator.offset for _ in iterator] + [whole.stat().st_size]
    cut_at = (starts[inside] + starts[inside + 1]) // 2  # the download stops halfway through record `inside`
    path = tmp_path / ("cut.warc.gz" if gz else "cut.warc")
    path.write_bytes(whole.read_bytes()[:cut_at])
    *pages, bad = records(path)
    pages_before = min(inside, 2)  # records 0 and 1 are the HTML pages
    assert [p.content for p in pages] == [p.content for p in complete[:pages_before]]  # whole pages, none cut
    assert isinstance(bad, BadRecord) and bad.message.startswith(f"broken WARC after {pages_before} pages")
    assert "the rest of the file is skipped" in bad.message


# --- extract -------------------------------------------------------------------------------------------------

def test_text_records_become_documents_as_they_are():
    rec = RawRecord(id="a.jsonl:3", source="a.jsonl", kind="text", content="原文。\n第二行", url="u",
                    meta={"k": 1})
    doc = extract(rec, ExtractConfig())
    assert isinstance(doc, Document)
    assert (doc.id, doc.text, doc.source, doc.url, doc.meta) == ("a.jsonl:3", "原文。\n第二行", "a.jsonl", "u",
                                                                 {"k": 1})


@pytest.mark.parametrize("paragraphs", [ZH_PARAGRAPHS, EN_PARAGRAPHS])
def test_html_main_text_keeps_one_line_per_paragraph_and_drops_navigation(paragraphs):
    rec = RawRecord(id="p.html:1", source="p.html", kind="html", content=article_html("Title", paragraphs),
                    url="https://x.example/a")
    doc = extract(rec, ExtractConfig())
    assert isinstance(doc, Document), doc
    lines = doc.text.split("\n")
    for p in paragraphs:
        assert p in lines  # each paragraph is a line of its own, whole
    assert "首页" not in doc.text and "Copyright" not in doc.text
    assert doc.url == "https://x.example/a"
    assert doc.signals["extracted_chars"] == len(doc.text)


def test_html_without_a_body_or_without_main_text_is_a_clear_bad_record():
    no_body = RawRecord(id="h.html:1", source="h.html", kind="html",
                        content="<html><head><title>Only a head</title></head></html>")
    bad = extract(no_body, ExtractConfig())
    assert isinstance(bad, BadRecord) and (bad.source, bad.record) == ("h.html", "h.html:1")
    assert bad.message.startswith("no <body>")
    no_text = RawRecord(id="n.html:1", source="n.html", kind="html",
                        content='<html><body><script>var a = 1;</script><div><img src="a.png"></div></body></html>')
    bad = extract(no_text, ExtractConfig())
    assert isinstance(bad, BadRecord) and bad.message.startswith("no main text")
    empty = extract(RawRecord(id="e.html:1", source="e.html", kind="html", content="  "), ExtractConfig())
    assert isinstance(empty, BadRecord) and "empty" in empty.message


def test_min_chars_drops_a_short_extraction_with_its_rule():
    rec = RawRecord(id="s:1", source="s", kind="text", content="短")
    dropped = extract(rec, ExtractConfig(min_chars=5))
    assert isinstance(dropped, Dropped) and dropped.rule == "extract.min_chars"
    assert dropped.detail == "1 chars < min_chars 5" and dropped.doc.id == "s:1"


def test_a_folder_of_good_and_broken_inputs_gives_every_good_document_and_names_every_bad_one(tmp_path):
    (tmp_path / "nobody.html").write_text("<html><head><title>t</title></head></html>")
    (tmp_path / "bad.txt").write_bytes(b"\xc3\x28 not utf-8")
    (tmp_path / "news.html").write_text(article_html("News", ZH_PARAGRAPHS), encoding="utf-8")
    write_jsonl(tmp_path / "dump.jsonl", [{"text": "kept text"}, "{oops", {"text": "also kept"}])
    docs, bad = [], []
    for path in input_files([str(tmp_path)]):
        for rec in read_records(path):
            result = rec if isinstance(rec, BadRecord) else extract(rec, ExtractConfig())
            (bad if isinstance(result, BadRecord) else docs).append(result)
    assert sorted(d.id for d in docs) == ["dump.jsonl:1", "dump.jsonl:3", "news.html:1"]
    assert sorted(str(b).split(": ", 1)[0].rsplit("/", 1)[-1] for b in bad) == ["bad.txt", "dump.jsonl",
                                                                                "nobody.html"]
    assert any(str(b).startswith(f"{tmp_path / 'dump.jsonl'}: record 2: not JSON") for b in bad)
