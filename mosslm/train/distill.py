"""The base model's own answers as training data, so that a fine-tune keeps what the base knew.

A LoRA fine-tune on plugin conversations alone teaches a small base that every question wants a
tool: asked "What is the largest ocean?", it searches the company handbook and quotes whatever
comes back. Mixing in tool-free turns whose replies the base itself wrote (greedy, through its
own chat template) shows where the tools stop, and costs the base nothing it knew: the targets
are its own words. `moss finetune --keep-knowledge N` and benchmarks/finetune_plugins.py use it.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from .. import model as modellib
from ..protocol import Conversation, Turn

GENERAL_QUESTIONS = Path(__file__).resolve().parents[1] / "resources" / "general" / "questions.txt"
_SENTENCE_END = re.compile(r"[。！？]|[.!?](?=\s|$)")  # Chinese stops need no space after them


class DistillError(ValueError):
    pass


def read_questions(path: str | Path | None = None) -> list[str]:
    """One question per line; blank lines and # comments skipped."""
    p = Path(path) if path else GENERAL_QUESTIONS
    if not p.exists():
        raise DistillError(f"no question file at {p}")
    questions = [line.strip() for line in p.read_text(encoding="utf-8").splitlines()]
    questions = [q for q in questions if q and not q.startswith("#")]
    if not questions:
        raise DistillError(f"{p} holds no questions (one per line)")
    return questions


def whole_sentences(text: str) -> str | None:
    """The reply cut after its last complete sentence (a generation stops mid-sentence at its
    token limit; training on that would teach the cut), or None when no sentence ends."""
    text = text.strip()
    ends = list(_SENTENCE_END.finditer(text))
    if not ends:
        return None
    return text[: ends[-1].end()].strip() or None


@torch.no_grad()
def base_replies(base: str | Path, questions: list[str], max_new_tokens: int = 64, batch_size: int = 16,
                 progress: bool = True) -> list[str]:
    """The base's greedy replies through its own chat template, batched with left padding."""
    loaded = modellib.load(base)
    tok, model = loaded.tokenizer, loaded.model
    if not getattr(tok, "chat_template", None):
        raise DistillError(f"{base} has no chat template: the base's own answers need one "
                           "(our MOSS-format checkpoints already speak the protocol and need no replay)")
    model.eval()
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(questions), desc="base answers", unit="q", dynamic_ncols=True)
    replies: list[str] = []
    for start in range(0, len(questions), batch_size):
        prompts = [tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                           tokenize=False) for q in questions[start:start + batch_size]]
        encoded = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
        width = max(len(e) for e in encoded)
        ids = torch.tensor([[pad] * (width - len(e)) + e for e in encoded])
        mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded])
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=pad)
        replies += [tok.decode(row[width:], skip_special_tokens=True) for row in out]
        if bar is not None:
            bar.update(len(encoded))
    if bar is not None:
        bar.close()
    return replies


def keep_knowledge_conversations(base: str | Path, meta: str, questions: list[str] | None = None,
                                 max_new_tokens: int = 64, progress: bool = True) -> list[Conversation]:
    """Tool-free MOSS conversations: each question with the base's own (whole-sentence) reply."""
    asked = questions if questions is not None else read_questions()
    convs = []
    for i, (q, reply) in enumerate(zip(asked, base_replies(base, asked, max_new_tokens, progress=progress))):
        kept = whole_sentences(reply)
        if kept:
            convs.append(Conversation(meta, [Turn(human=q, reply=kept, plugin=True)], id=f"keep-{i:04d}",
                                      extra={"category": "keep_knowledge"}))
    return convs
