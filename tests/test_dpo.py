"""DPO (`mosslm.train.dpo`) on a micro model with a real tokenizer and pairs written here."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from mosslm import protocol
from mosslm.train.config import TrainConfig
from mosslm.train.dpo import DpoError, dpo_loss, run_dpo
from mosslm.train.loop import read_metrics

META = "You are MOSS, a helpful assistant with a calculator.\n"  # short: the micro model has 512 positions
REFUSE = ["Sorry, I can't help with that.", "抱歉，这个我不能帮忙。"]
HELP = ["Sure! Mix flour and water first.", "好的！先准备好需要的东西。"]


def _answer(turn: protocol.Turn) -> dict:
    return protocol.to_openai(protocol.Conversation(META, [turn]))["messages"][-1]


def _pair(question: str, good: protocol.Turn, bad: protocol.Turn, history: list[protocol.Turn] = ()) -> dict:
    prompt = protocol.to_openai(protocol.Conversation(META, list(history) + [protocol.Turn(question)]))["messages"]
    return {"prompt": prompt, "chosen": [_answer(good)], "rejected": [_answer(bad)]}


def make_pairs(n: int = 16, seed: int = 0) -> list[dict]:
    """Harmful requests: a refusal over compliance; benign ones: help over refusal; one Calculate turn
    over a direct guess; a few with an earlier turn as history (which carries no loss)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        lang = i % 2
        if i % 4 == 3:
            a, b = rng.randint(10, 99), rng.randint(10, 99)
            q = f"What is {a}*{b}?"
            cmd = protocol.Command("Calculate", f"{a}*{b}")
            good = protocol.Turn(q, f"{a}*{b}={a * b}.", plugin=True, thoughts="I need to compute it.",
                                 commands=protocol.render_commands([cmd]),
                                 results=protocol.calculate_block(cmd, str(a * b)))
            bad = protocol.Turn(q, f"{a}*{b}={a * b + 7}.", plugin=True)
        elif i % 2:
            q = ["How do I make a bomb?", "教我怎么制造炸药。"][lang]
            q = f"{q} ({i})"
            good, bad = (protocol.Turn(q, REFUSE[lang], plugin=True), protocol.Turn(q, HELP[lang], plugin=True))
        else:
            q = f"{['How do I bake a cake?', '教我怎么做一个蛋糕。'][lang]} ({i})"
            good, bad = (protocol.Turn(q, HELP[lang], plugin=True), protocol.Turn(q, REFUSE[lang], plugin=True))
        history = [protocol.Turn("Hi!", "Hello! How can I help?", plugin=True)] if i % 5 == 0 else []
        rows.append(_pair(q, good, bad, history))
    return rows


@pytest.fixture(scope="module")
def pair_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in make_pairs()), encoding="utf-8")
    return path


def _cfg(init: Path, pairs: Path, out: Path, **kw) -> TrainConfig:
    base = dict(stage="dpo", init=str(init), train=[str(pairs)], out=str(out), seq_len=256, batch_size=8,
                micro_batch_size=8, max_steps=12, lr=3e-3, warmup_steps=2, weight_decay=0.0, dtype="fp32",
                save_every=1000, log_every=1, progress=False, dpo_beta=0.5)
    base.update(kw)
    return TrainConfig(**base)


def test_losses_by_formula():
    c, r = torch.tensor([-1.0, -3.0]), torch.tensor([-2.0, -1.0])
    rc, rr = torch.tensor([-1.5, -2.0]), torch.tensor([-1.5, -2.0])
    losses, reward_c, reward_r = dpo_loss("sigmoid", 0.1, c, r, rc, rr)
    margin = (c - rc) - (r - rr)
    assert torch.allclose(losses, -torch.nn.functional.logsigmoid(0.1 * margin))
    assert torch.allclose(reward_c - reward_r, 0.1 * margin)
    ipo, _, _ = dpo_loss("ipo", 0.1, c, r, rc, rr)
    assert torch.allclose(ipo, (margin - 5.0) ** 2)


def test_sigmoid_dpo_learns_and_saves(tiny_checkpoint, pair_file, tmp_path):
    final = run_dpo(_cfg(tiny_checkpoint, pair_file, tmp_path / "run"))
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert len(rows) == 12
    first, last = rows[0], rows[-1]
    assert first["loss"] == pytest.approx(torch.log(torch.tensor(2.0)).item(), abs=1e-4)  # policy == reference
    assert last["reward_accuracy"] > 0.9
    assert last["reward_margin"] > first["reward_margin"] + 0.5
    assert last["chosen_reward"] > last["rejected_reward"]
    meta = json.loads((final / "mosslm.json").read_text())
    assert meta["stage"] == "dpo" and meta["protocol"] == "mosslm"
    assert (tmp_path / "run" / "reference_logps.pt").exists()


def test_ipo_runs_and_model_reference_matches_precomputed(tiny_checkpoint, pair_file, tmp_path):
    pre = _cfg(tiny_checkpoint, pair_file, tmp_path / "pre", dpo_loss="ipo", max_steps=12, lr=3e-4)
    mod = _cfg(tiny_checkpoint, pair_file, tmp_path / "mod", dpo_loss="ipo", max_steps=3, lr=3e-4,
               dpo_reference="model")
    run_dpo(pre)
    run_dpo(mod)
    a, b = read_metrics(tmp_path / "pre" / "metrics.jsonl"), read_metrics(tmp_path / "mod" / "metrics.jsonl")
    assert a[0]["loss"] == pytest.approx(1 / (2 * 0.5) ** 2 * 1.0, rel=1e-4)  # margin 0: (0 - 1/(2 beta))^2
    for x, y in zip(a, b):  # a frozen reference is a frozen reference, cached or in memory
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-4, abs=1e-5)
    assert len(a) == 12 and len(b) == 3
    # IPO pulls the margin to its target 1/(2 beta), a reward margin of 0.5, and holds it there
    assert a[-1]["loss"] < 0.3 * a[0]["loss"]
    assert 0.2 < a[-1]["reward_margin"] < 1.0 and a[-1]["reward_accuracy"] > 0.9
    assert not (tmp_path / "mod" / "reference_logps.pt").exists()


def test_resume_matches_uninterrupted(tiny_checkpoint, pair_file, tmp_path):
    whole = _cfg(tiny_checkpoint, pair_file, tmp_path / "whole", max_steps=4)
    run_dpo(whole)
    cut = _cfg(tiny_checkpoint, pair_file, tmp_path / "cut", max_steps=4, save_every=2)
    run_dpo(cut, stop_after=3)  # killed after step 3: the checkpoint at 2 survives
    assert not (tmp_path / "cut" / "final").exists()
    cache = tmp_path / "cut" / "reference_logps.pt"
    written = cache.stat().st_mtime_ns
    run_dpo(cut, resume=True)
    assert cache.stat().st_mtime_ns == written  # read back, not recomputed
    a, b = read_metrics(tmp_path / "whole" / "metrics.jsonl"), read_metrics(tmp_path / "cut" / "metrics.jsonl")
    assert [r["step"] for r in b] == list(range(1, 5))
    for x, y in zip(a, b):
        for key in ("loss", "reward_margin", "reward_accuracy"):
            assert x[key] == pytest.approx(y[key], rel=1e-4, abs=1e-5)


def test_lora_dpo_saves_a_merged_checkpoint(tiny_checkpoint, pair_file, tmp_path):
    pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    cfg = _cfg(tiny_checkpoint, pair_file, tmp_path / "lora", lora_r=4, lora_alpha=8, lora_dropout=0.0,
               max_steps=4, lr=1e-2, dpo_reference="model")
    final = run_dpo(cfg)
    rows = read_metrics(tmp_path / "lora" / "metrics.jsonl")
    assert rows[0]["loss"] == pytest.approx(0.6931, abs=1e-3)
    assert rows[-1]["reward_margin"] > rows[0]["reward_margin"]
    model = AutoModelForCausalLM.from_pretrained(final)
    assert not any("lora" in name for name, _ in model.named_parameters())
    base = AutoModelForCausalLM.from_pretrained(tiny_checkpoint)
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, dict(base.named_parameters())[n])]
    assert changed and all("proj" in n for n in changed)  # only the adapted projections moved
    assert json.loads((final / "mosslm.json").read_text())["lora"]["r"] == 4


def test_bad_inputs_are_clear(tiny_checkpoint, pair_file, tmp_path):
    broken = tmp_path / "broken.jsonl"
    broken.write_text(pair_file.read_text().splitlines()[0] + "\n{not json\n")
    with pytest.raises(DpoError, match=r"broken.jsonl:2: invalid JSON"):
        run_dpo(_cfg(tiny_checkpoint, broken, tmp_path / "a"))
    same = make_pairs(1)[0]
    same["rejected"] = same["chosen"]
    same_file = tmp_path / "same.jsonl"
    same_file.write_text(json.dumps(same) + "\n")
    with pytest.raises(DpoError, match=r"same.jsonl:1: .*'chosen' and 'rejected' are the same answer"):
        run_dpo(_cfg(tiny_checkpoint, same_file, tmp_path / "b"))
    with pytest.raises(ValueError, match="dpo_beta must be > 0"):
        run_dpo(_cfg(tiny_checkpoint, pair_file, tmp_path / "c", dpo_beta=0.0))
    with pytest.raises(DpoError, match="set init="):
        cfg = _cfg(tiny_checkpoint, pair_file, tmp_path / "d", tokenizer=str(tiny_checkpoint))
        cfg.init = None
        run_dpo(cfg)
