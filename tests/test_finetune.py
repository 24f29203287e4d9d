"""`moss finetune` (LoRA), `--protocol moss` on a base that has never seen the MOSS protocol, resume, merging
(`moss export --merge-lora`) and loading an adapter on its base, as `moss chat`/`serve --adapter` do."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import bilingual_corpus

pytest.importorskip("peft")

from mosslm import protocol  # noqa: E402
from mosslm.cli import main  # noqa: E402
from mosslm.train.loop import read_metrics  # noqa: E402


@pytest.fixture(scope="module")
def foreign_base(tmp_path_factory) -> Path:
    """A tiny Llama whose tokenizer knows none of the MOSS tokens: a plain HF folder, as a Hub model is."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers, decoders
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(bilingual_corpus(200), trainers.BpeTrainer(
        vocab_size=500, special_tokens=["</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=1024, tie_word_embeddings=True,
                                         eos_token_id=tokenizer.eos_token_id))
    path = tmp_path_factory.mktemp("foreign") / "base"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def plugin_data(tmp_path_factory) -> Path:
    from mosslm.data.synth import generate_corpus

    folder = tmp_path_factory.mktemp("plugin-data")
    generate_corpus(folder, seed=0, scale=0.02, recipe="plugins")
    lines = sorted((folder / "sft_train.jsonl").read_text(encoding="utf-8").splitlines(), key=len)[:8]
    (folder / "small.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder / "small.jsonl"


def finetune(base: Path, data: Path, out: Path, *extra: str) -> int:
    return main(["finetune", "--model", str(base), "--data", str(data), "--out", str(out), "--protocol", "moss",
                 "--plugins", "Search,Calculate,Solve", "--rank", "8", "max_steps=16", "batch_size=4",
                 "micro_batch_size=2", "seq_len=768", "lr=3e-2", "warmup_steps=2", "save_every=8",
                 "progress=false", "dtype=fp32", *extra])


@pytest.fixture(scope="module")
def adapter(foreign_base, plugin_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ft") / "run"
    assert finetune(foreign_base, plugin_data, out) == 0
    return out / "final"


def test_protocol_moss_makes_each_tag_one_special_token_and_learns(adapter):
    from transformers import AutoTokenizer

    files = {p.name for p in adapter.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "chat_template.jinja", "mosslm.json",
            "manifest.json"} <= files
    assert "model.safetensors" not in files  # an adapter, not a copy of the base
    tok = AutoTokenizer.from_pretrained(adapter)
    for token in protocol.PROTECTED:
        assert len(tok(token, add_special_tokens=False)["input_ids"]) == 1, token
    meta = json.loads((adapter / "mosslm.json").read_text())
    assert meta["adapter"] is True and meta["plugins"] == ["Search", "Calculate", "Solve"]
    assert Path(meta["base"]).name == "base" and meta["lora"]["protocol_tokens"] is True
    rows = read_metrics(adapter.parent / "metrics.jsonl")
    assert len(rows) == 16
    # A random tiny base learns slowly through rank-8 adapters, but it learns: the loss falls.
    assert sum(r["loss"] for r in rows[-4:]) < 0.97 * sum(r["loss"] for r in rows[:4])


def test_a_foreign_base_without_protocol_moss_is_refused_clearly(foreign_base, plugin_data, tmp_path, capsys):
    code = main(["finetune", "--model", str(foreign_base), "--data", str(plugin_data), "--out", str(tmp_path / "r"),
                 "max_steps=1", "progress=false"])
    assert code == 1
    assert "--protocol moss" in capsys.readouterr().err


def test_bad_settings_give_clear_errors(foreign_base, plugin_data, tmp_path, capsys):
    assert finetune(foreign_base, plugin_data, tmp_path / "a", "lora_targets=c_attn") == 1
    assert "lora_targets ['c_attn'] are not modules of this model" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert finetune(foreign_base, plugin_data, tmp_path / "b", "qlora=true") == 1
        assert "qlora needs a CUDA GPU" in capsys.readouterr().err
    assert main(["finetune", "--model", str(tmp_path / "nope"), "--data", str(plugin_data),
                 "--out", str(tmp_path / "c")]) == 2


def test_resume_after_a_stop_continues_with_the_same_losses(foreign_base, plugin_data, adapter, tmp_path):
    from mosslm.train.cli import finetune_config
    from mosslm.cli import build_parser
    from mosslm.train.loop import train

    out = tmp_path / "run"
    args = build_parser().parse_args(["finetune", "--model", str(foreign_base), "--data", str(plugin_data),
                                      "--out", str(out), "--protocol", "moss", "--plugins", "Search,Calculate,Solve",
                                      "--rank", "8", "max_steps=16", "batch_size=4", "micro_batch_size=2",
                                      "seq_len=768", "lr=3e-2", "warmup_steps=2", "save_every=8", "progress=false",
                                      "dtype=fp32"])
    cfg = finetune_config(args)
    train(cfg, stop_after=11)  # killed after step 11: the last checkpoint is step 8
    final = train(cfg, resume=True)
    resumed = [r["loss"] for r in read_metrics(out / "metrics.jsonl")]
    straight = [r["loss"] for r in read_metrics(adapter.parent / "metrics.jsonl")]
    assert resumed == pytest.approx(straight, rel=1e-5, abs=1e-6)
    assert (final / "adapter_model.safetensors").exists()


def _logits(model, tokenizer, text: str) -> torch.Tensor:
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def test_merge_lora_writes_a_folder_plain_transformers_loads(foreign_base, adapter, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert main(["export", "--merge-lora", str(adapter), "--out", str(tmp_path / "merged")]) == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    tok = AutoTokenizer.from_pretrained(tmp_path / "merged")
    text = f"{protocol.HUMAN}: 1+1?{protocol.EOH}\n{protocol.THOUGHTS}:"
    base = AutoModelForCausalLM.from_pretrained(foreign_base)
    base.resize_token_embeddings(len(tok))
    on_base = PeftModel.from_pretrained(base, adapter).eval()
    assert torch.allclose(_logits(merged, tok, text), _logits(on_base, tok, text), atol=1e-4)
    meta = json.loads((tmp_path / "merged" / "mosslm.json").read_text())
    assert meta["plugins"] == ["Search", "Calculate", "Solve"] and meta["protocol"] == "mosslm"
    assert "{{" in (tmp_path / "merged" / "chat_template.jinja").read_text()


def test_an_adapter_loads_on_its_base_as_chat_and_serve_do(foreign_base, adapter, tmp_path):
    from mosslm.model import ModelLoadError, load

    alone = load(adapter)  # the adapter names its base
    on_base = load(foreign_base, adapter=adapter)  # moss serve --model BASE --adapter DIR
    assert alone.speaks_moss and alone.protocol == "mosslm"
    text = f"{protocol.HUMAN}: hello{protocol.EOH}\n"
    assert torch.equal(_logits(alone.model, alone.tokenizer, text), _logits(on_base.model, on_base.tokenizer, text))
    plain = load(foreign_base)
    assert plain.model.get_input_embeddings().weight.shape[0] < alone.model.get_input_embeddings().weight.shape[0]
    with pytest.raises(ModelLoadError, match="not a LoRA adapter folder"):
        load(foreign_base, adapter=tmp_path)


def test_moss_chat_answers_with_an_adapter_on_its_base(foreign_base, adapter, capsys):
    code = main(["chat", "--model", str(foreign_base), "--adapter", str(adapter), "--message", "hello",
                 "--max-new-tokens", "8", "--temperature", "0"])
    assert code == 0
    assert f"with the adapter {adapter}" in capsys.readouterr().err


def test_bf16_training_skips_the_adapter_input_casts_bit_identically(foreign_base):
    from mosslm.train import lora
    from mosslm.train.config import LORA_TARGETS
    from mosslm.train.loop import TokenLoss

    model, tokenizer = lora.load_base(str(foreign_base))
    model = lora.wrap(model, 8, 16, 0.0, list(LORA_TARGETS), lora.add_protocol_tokens(model, tokenizer))
    loss_model = TokenLoss(model)
    ids = torch.randint(0, len(tokenizer), (2, 40), generator=torch.Generator().manual_seed(0))

    def loss_and_grads():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = loss_model(ids, ids.clone())
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        model.zero_grad(set_to_none=True)
        return loss.detach(), grads

    cast_loss, cast_grads = loss_and_grads()
    lora.skip_input_casts(model)
    assert not any(getattr(m, "cast_input_dtype_enabled", False) for m in model.modules())
    loss, grads = loss_and_grads()
    assert torch.equal(loss, cast_loss)
    assert grads.keys() == cast_grads.keys() and len(grads) > 4
    assert all(torch.equal(grads[k], cast_grads[k]) for k in grads)


def test_compiled_layers_train_like_eager_ones(foreign_base, plugin_data, tmp_path):
    steps = ["max_steps=4", "dtype=bf16"]
    assert finetune(foreign_base, plugin_data, tmp_path / "eager", *steps) == 0
    assert finetune(foreign_base, plugin_data, tmp_path / "compiled", *steps, "compile=true") == 0
    eager = [r["loss"] for r in read_metrics(tmp_path / "eager" / "metrics.jsonl")]
    fused = [r["loss"] for r in read_metrics(tmp_path / "compiled" / "metrics.jsonl")]
    assert len(fused) == 4
    # Fusion rounds bf16 intermediates differently, so close, not equal.
    assert fused == pytest.approx(eager, rel=2e-2)


def test_compile_without_a_cpp_compiler_is_a_clear_error(foreign_base, plugin_data, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-g++"))
    assert finetune(foreign_base, plugin_data, tmp_path / "run", "max_steps=1", "compile=true") == 1
    assert "compile=true on a CPU needs a C++ compiler" in capsys.readouterr().err
