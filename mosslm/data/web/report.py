"""The stats report of `moss data clean`: OUT/report.json for machines, OUT/report.md for people, and
OUT/explain.md with samples of what each rule dropped or trimmed (with --explain N)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any


def _sum(shards: list[dict[str, Any]], key: str) -> Counter:
    total: Counter = Counter()
    for s in shards:
        total.update(s.get(key, {}))
    return total


def totals(shards: list[dict[str, Any]]) -> dict[str, Any]:
    bad = [b for s in shards for b in s.get("bad_records", [])]
    return {"shards": len(shards), "documents_in": sum(s["records"] for s in shards),
            "bad_records": len(bad), "bytes_in": sum(s["bytes_in"] for s in shards),
            "documents_out": sum(s["documents_out"] for s in shards),
            "bytes_out": sum(s["bytes_out"] for s in shards),
            "drops": dict(_sum(shards, "drops").most_common()),
            "trimmed_lines": dict(_sum(shards, "trimmed_lines").most_common()),
            "languages": dict(_sum(shards, "languages").most_common()),
            "pii_masked": dict(_sum(shards, "pii").most_common()),
            "bad_record_messages": bad[:50]}


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def markdown(report: dict[str, Any]) -> str:
    t = report["all"]
    lines = ["# moss data clean", "",
             f"{t['documents_in']} documents in ({_mb(t['bytes_in'])}), {t['documents_out']} out "
             f"({_mb(t['bytes_out'])}), {t['bad_records']} unreadable records, {t['shards']} shards.",
             f"This run: {report['run']['shards']} shards in {report['run']['seconds']:.1f} s with "
             f"{report['run']['workers']} worker(s), {report['run']['mb_per_s']:.2f} MB/s "
             f"({report['run']['mb_per_s_per_worker']:.2f} MB/s per worker); {report['run']['skipped']} finished "
             "shards skipped.", "", "## Documents dropped, per rule", "", "| rule | documents | share of input |",
             "|---|---|---|"]
    for rule, n in t["drops"].items():
        lines.append(f"| {rule} | {n} | {n / max(1, t['documents_in']):.1%} |")
    lines += ["", "## Lines trimmed from kept documents, per rule", "", "| rule | lines |", "|---|---|"]
    lines += [f"| {rule} | {n} |" for rule, n in t["trimmed_lines"].items()]
    lines += ["", "## Languages kept", "", "| language | documents |", "|---|---|"]
    lines += [f"| {lang} | {n} |" for lang, n in t["languages"].items()]
    lines += ["", "## PII masked", "", "| kind | items |", "|---|---|"]
    lines += [f"| {kind} | {n} |" for kind, n in t["pii_masked"].items()]
    if t["bad_record_messages"]:
        lines += ["", "## Unreadable records", ""] + [f"- {m}" for m in t["bad_record_messages"]]
    return "\n".join(lines) + "\n"


def explain_markdown(out: Path, per_rule: int) -> str | None:
    samples: list[dict[str, Any]] = []
    for path in sorted((out / "explain").glob("part-*.jsonl")):
        samples += [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not samples:
        return None
    lines = ["# What the rules removed", "", "Samples per rule, for a person to read: whole documents that a rule "
             "dropped, then lines trimmed from documents that were kept.", ""]
    for kind in ("dropped", "trimmed"):
        by_rule: dict[str, list[dict]] = {}
        for s in samples:
            if s["kind"] == kind and len(by_rule.setdefault(s["rule"], [])) < per_rule:
                by_rule[s["rule"]].append(s)
        for rule in sorted(by_rule):
            lines += [f"## {kind}: {rule}", ""]
            for s in by_rule[rule]:
                detail = f" ({s['detail']})" if s.get("detail") else ""
                text = s["text"].replace("\n", "\n> ")
                lines += [f"`{s['id']}`{detail}", "", f"> {text}", ""]
    return "\n".join(lines)


def write_report(out: Path, done: dict[str, dict[str, Any]], this_run: list[dict[str, Any]], seconds: float,
                 workers: int, skipped: int, explain: int = 0) -> dict[str, Any]:
    run_bytes = sum(s["bytes_in"] for s in this_run)
    mb_s = run_bytes / 1e6 / seconds if seconds > 0 else 0.0
    report = {"all": totals(list(done.values())),
              "run": {**totals(this_run), "seconds": round(seconds, 2), "workers": workers, "skipped": skipped,
                      "mb_per_s": round(mb_s, 3), "mb_per_s_per_worker": round(mb_s / max(1, workers), 3)}}
    for name, text in (("report.json", json.dumps(report, ensure_ascii=False, indent=2) + "\n"),
                       ("report.md", markdown(report))):
        tmp = out / (name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(out / name)
    if explain:
        text = explain_markdown(out, explain)
        if text:
            (out / "explain.md").write_text(text, encoding="utf-8")
    return report
