"""Multiple choice from local files: CMMLU, C-Eval and MMLU in their published CSV layouts.

- CMMLU: `DIR/{dev,test}/SUBJECT.csv`, header `,Question,A,B,C,D,Answer`.
- C-Eval: `DIR/{dev,val,test}/SUBJECT_{dev,val,test}.csv`, header `id,question,A,B,C,D,answer[,explanation]`;
  its test answers are hidden, so it is scored on val.
- MMLU: `DIR/{dev,test}/SUBJECT_{dev,test}.csv` (or under `DIR/data/`), no header: question, A-D, answer.

Each benchmark keeps its own prompt (the header line its code writes, `答案：` or `Answer:`), with up to K
worked examples from dev. Two scorings:
- `loglik`: the answer letter with the highest log-likelihood after the prompt (CMMLU's official way,
  and lm-evaluation-harness's);
- `generate`: the question in the model's chat format, greedy, and the first A-D letter of the reply
  (how C-Eval scored MOSS).
Accuracy per subject and the macro average over subjects.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

LETTERS = ("A", "B", "C", "D")


class ChoiceDataError(ValueError):
    pass


@dataclass(frozen=True)
class Question:
    subject: str
    question: str
    choices: tuple[str, str, str, str]
    answer: str


@dataclass(frozen=True)
class Layout:
    name: str
    eval_split: str
    header: str           # {subject}
    answer_cue: str       # after the options
    letter_prefix: str    # what comes before the letter in a continuation (MMLU's " A")
    has_header_row: bool


LAYOUTS = {
    "cmmlu": Layout("cmmlu", "test", "以下是关于{subject}的单项选择题，请直接给出正确答案的选项。\n\n", "答案：", "", True),
    "ceval": Layout("ceval", "val", "以下是中国关于{subject}考试的单项选择题，请选出其中的正确答案。\n\n", "答案：", "", True),
    "mmlu": Layout("mmlu", "test", "The following are multiple choice questions (with answers) about {subject}.\n\n",
                   "Answer:", " ", False),
}


def _split_dir(root: Path, split: str) -> Path | None:
    for d in (root / split, root / "data" / split):
        if d.is_dir():
            return d
    return None


def _subject(path: Path, split: str) -> str:
    stem = path.stem
    return stem[:-len(split) - 1] if stem.endswith("_" + split) else stem


def _rows(path: Path, layout: Layout) -> list[list[str]]:
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            rows = [r for r in csv.reader(f) if any(cell.strip() for cell in r)]
    except UnicodeDecodeError as e:
        raise ChoiceDataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except csv.Error as e:
        raise ChoiceDataError(f"{path}: not a CSV file ({e})") from None
    if not layout.has_header_row:
        return rows
    if not rows:
        return []
    head = [c.strip().lower() for c in rows[0]]
    need = ["question", "a", "b", "c", "d", "answer"]
    missing = [n for n in need if n not in head]
    if missing:
        raise ChoiceDataError(f"{path}: the header has no {', '.join(missing)} column "
                              f"({layout.name} files start with {'id,' if layout.name == 'ceval' else ','}"
                              f"{'question' if layout.name == 'ceval' else 'Question'},A,B,C,D,"
                              f"{'answer' if layout.name == 'ceval' else 'Answer'})")
    at = [head.index(n) for n in need]
    return [[r[i] if i < len(r) else "" for i in at] for r in rows[1:]]


def read_split(root: str | Path, layout_name: str, split: str) -> list[Question]:
    layout = LAYOUTS[layout_name]
    root = Path(root)
    folder = _split_dir(root, split)
    if folder is None:
        return []
    questions = []
    for path in sorted(folder.glob("*.csv")):
        subject = _subject(path, split)
        for n, row in enumerate(_rows(path, layout), start=2 if layout.has_header_row else 1):
            if len(row) < 6:
                raise ChoiceDataError(f"{path}:{n}: a row needs a question, four options and an answer")
            q, a, b, c, d, answer = (cell.strip() for cell in row[:6])
            answer = answer.upper()
            if split != "test" or layout_name != "ceval":
                if answer not in LETTERS:
                    raise ChoiceDataError(f"{path}:{n}: the answer must be one of A, B, C, D (got {answer!r})")
            questions.append(Question(subject, q, (a, b, c, d), answer))
    return questions


def load(root: str | Path, layout_name: str) -> tuple[list[Question], list[Question]]:
    """(questions scored, dev examples) of a benchmark folder."""
    if layout_name not in LAYOUTS:
        raise ChoiceDataError(f"unknown multiple-choice layout {layout_name!r} (one of {', '.join(LAYOUTS)})")
    root = Path(root)
    if not root.is_dir():
        raise ChoiceDataError(f"{root} is not a folder (a {layout_name} folder holds dev/ and "
                              f"{LAYOUTS[layout_name].eval_split}/ CSV files)")
    layout = LAYOUTS[layout_name]
    scored = read_split(root, layout_name, layout.eval_split)
    if not scored:
        raise ChoiceDataError(f"{root} has no {layout.eval_split}/*.csv questions for {layout_name}")
    return scored, read_split(root, layout_name, "dev")


def subject_name(subject: str, layout: Layout) -> str:
    return subject.replace("_", " ") if layout.name == "mmlu" else subject


def block(q: Question, layout: Layout, with_answer: bool) -> str:
    options = "".join(f"\n{letter}. {text}" for letter, text in zip(LETTERS, q.choices))
    text = f"{q.question}{options}\n{layout.answer_cue}"
    if with_answer:
        return text + f"{layout.letter_prefix}{q.answer}\n\n"
    return text


def prompt(q: Question, layout: Layout, dev: list[Question], shots: int) -> str:
    """The benchmark's own prompt: its header, `shots` solved dev questions of the same subject, the question."""
    examples = [d for d in dev if d.subject == q.subject][:shots]
    return (layout.header.format(subject=subject_name(q.subject, layout))
            + "".join(block(d, layout, True) for d in examples) + block(q, layout, False))


def first_letter(reply: str) -> str | None:
    """The reply's answer letter: a leading A-D not starting a word ("B", "C. Paris", "AAAA"), else the first
    standalone A-D in it ("答案：C", "The answer is (D)")."""
    text = reply.strip()
    if text[:1] in LETTERS and not text[1:2].islower():
        return text[0]
    m = re.search(r"(?<![A-Za-z])([ABCD])(?![A-Za-z])", text)
    return m.group(1) if m else None


def accuracy(questions: list[Question], predicted: list[str | None]) -> dict:
    """{"acc": macro over subjects, "acc_micro", "subjects": {subject: acc}, "n"}."""
    per: dict[str, list[int]] = {}
    for q, p in zip(questions, predicted):
        per.setdefault(q.subject, []).append(int(p == q.answer))
    subjects = {s: sum(v) / len(v) for s, v in sorted(per.items())}
    return {"acc": sum(subjects.values()) / len(subjects),
            "acc_micro": sum(sum(v) for v in per.values()) / len(questions),
            "n": len(questions), "subjects": subjects}
