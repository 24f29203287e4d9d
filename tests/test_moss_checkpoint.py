"""MOSS-moon-003 folders load on transformers' CodeGen classes, with no custom code, and serve as MOSS."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from tiny_moss_checkpoint import write_tiny_moss_checkpoint

from mosslm import protocol
from mosslm.agent import ModelGenerator
from mosslm.engine import SamplingParams
from mosslm.model import ModelLoadError, load


def moss(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "mosslm", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def moss_folder(tmp_path_factory):
    return write_tiny_moss_checkpoint(tmp_path_factory.mktemp("moss") / "tiny-moss-moon")


def reference_logits(sd: dict, cfg: dict, ids: list[int]) -> torch.Tensor:
    """The MOSS forward pass written from its description, in plain torch (fp32)."""
    w = {k: v.float() for k, v in sd.items()}
    e, n_head, rot = cfg["n_embd"], cfg["n_head"], cfg["rotary_dim"]
    d, t = e // n_head, len(ids)
    eps = cfg["layer_norm_epsilon"]
    x = w["transformer.wte.weight"][torch.tensor(ids)]                       # [T, E]
    inv_freq = 1.0 / 10000 ** (torch.arange(0, rot, 2).float() / rot)
    angle = torch.arange(t).float()[:, None] * inv_freq[None, :]             # [T, rot/2]
    sin, cos = angle.sin()[:, None, :], angle.cos()[:, None, :]

    def rotary(z):  # [T, H, D]: rotate interleaved pairs (2j, 2j+1) of the first `rot` dims
        even, odd = z[..., :rot:2], z[..., 1:rot:2]
        turned = torch.stack([even * cos - odd * sin, odd * cos + even * sin], dim=-1).flatten(-2)
        return torch.cat([turned, z[..., rot:]], dim=-1)

    causal = torch.ones(t, t).tril().bool()
    for i in range(cfg["n_layer"]):
        p = f"transformer.h.{i}."
        h = F.layer_norm(x, (e,), w[p + "ln_1.weight"], w[p + "ln_1.bias"], eps)
        qkv = (h @ w[p + "attn.qkv_proj.weight"].T).reshape(t, 4, 3 * e // 4)  # mp_num = 4 parts
        local = e // 4
        q, v, k = qkv[..., :local], qkv[..., local:2 * local], qkv[..., 2 * local:]  # query, value, key
        q, k, v = (z.reshape(t, n_head, d) for z in (q, k, v))
        q, k = rotary(q), rotary(k)
        scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(d)
        scores = scores.masked_fill(~causal, float("-inf")).softmax(-1)
        attn = torch.einsum("hqk,khd->qhd", scores, v).reshape(t, e) @ w[p + "attn.out_proj.weight"].T
        mlp = F.gelu(h @ w[p + "mlp.fc_in.weight"].T + w[p + "mlp.fc_in.bias"], approximate="tanh")
        mlp = mlp @ w[p + "mlp.fc_out.weight"].T + w[p + "mlp.fc_out.bias"]
        x = x + attn + mlp                                                   # GPT-J's parallel block
    x = F.layer_norm(x, (e,), w["transformer.ln_f.weight"], w["transformer.ln_f.bias"], eps)
    return x @ w["lm_head.weight"].T + w["lm_head.bias"]                    # untied head with bias


def test_logits_equal_a_plain_torch_forward_of_the_released_layout(moss_folder):
    folder, cfg, sd = moss_folder
    loaded = load(folder)
    assert type(loaded.model).__name__ == "CodeGenForCausalLM"
    ids = loaded.tokenizer.encode("<|Human|>: 你好，MOSS! What is 12*7?<eoh>\n<|MOSS|>:", add_special_tokens=False)
    assert len(ids) > 10
    with torch.no_grad():
        ours = loaded.model(torch.tensor([ids])).logits[0]
    ref = reference_logits(sd, cfg, ids)
    assert ours.shape == (len(ids), cfg["vocab_size"])
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    # The check has teeth: the same weights read in the wrong qkv order give other logits.
    swapped = dict(sd)
    for i in range(cfg["n_layer"]):
        key = f"transformer.h.{i}.attn.qkv_proj.weight"
        parts = sd[key].reshape(4, 3, cfg["n_embd"] // 4, cfg["n_embd"])
        swapped[key] = parts[:, [0, 2, 1]].reshape(3 * cfg["n_embd"], cfg["n_embd"])
    assert not torch.allclose(reference_logits(swapped, cfg, ids), ref, atol=1e-3)


def test_tokenizer_keeps_the_released_ids_and_matches_terminators_whole(moss_folder):
    folder, cfg, _ = moss_folder
    tok = load(folder).tokenizer
    added = json.loads((folder / "added_tokens.json").read_text())
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    assert all(tok.convert_tokens_to_ids(t) == i for t, i in added.items())
    assert tok.convert_tokens_to_ids("<|endoftext|>") == vocab["<|endoftext|>"] == cfg["bos_token_id"]
    text = "<|Human|>: 你好 hello<eoh>\n<|MOSS|>: 好的<eor><eom>\n"
    ids = tok.encode(text, add_special_tokens=False)
    for term in ("<eoh>", "<eor>", "<eom>"):
        assert added[term] in ids
    assert tok.decode(ids, skip_special_tokens=False) == text


def test_loaded_model_speaks_the_moss_preset_and_stops_at_eom(moss_folder):
    folder, cfg, _ = moss_folder
    loaded = load(folder)
    assert loaded.protocol == "moss" and loaded.context_length == cfg["n_positions"]
    assert loaded.model.generation_config.eos_token_id == loaded.tokenizer.convert_tokens_to_ids("<eom>")
    messages = [{"role": "user", "content": "你好"}]
    rendered = loaded.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    conv = protocol.from_openai(messages, escape_user=True)
    assert rendered == protocol.generation_prompt(conv) and rendered.startswith(protocol.MOSS_META_INSTRUCTION)


def test_engine_greedy_output_equals_transformers_generate(moss_folder):
    folder, _, _ = moss_folder
    loaded = load(folder)
    gen = ModelGenerator(loaded)
    try:
        eom = loaded.tokenizer.convert_tokens_to_ids("<eom>")
        for text in ("<|Human|>: 你好<eoh>\n<|MOSS|>:", "Hello, I am MOSS. 1234*5678="):
            prompt = gen.encode(text)
            ours = gen.engine.generate(prompt, SamplingParams(max_new_tokens=24, temperature=0.0,
                                                              stop_token_ids=[eom])).token_ids
            ref = loaded.model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                        max_new_tokens=24, do_sample=False, eos_token_id=eom,
                                        repetition_penalty=1.0,  # the folder's MOSS default is 1.02
                                        pad_token_id=loaded.tokenizer.pad_token_id or 0)[0, len(prompt):].tolist()
            assert ours == ref and len(ours) > 1
    finally:
        gen.engine.shutdown()


def test_moss_chat_answers_through_the_moss_preset_without_custom_code(moss_folder, tmp_path):
    folder, _, _ = moss_folder
    result = moss("chat", "--model", str(folder), "--message", "你好", "--temperature", "0",
                  "--max-new-tokens", "8", "--show-protocol", env={"MOSSLM_HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert "Do you wish to run the custom code" not in result.stdout + result.stderr
    assert "--- protocol ---" in result.stdout
    protocol_text = result.stdout.split("--- protocol ---\n", 1)[1]
    assert protocol_text.startswith(protocol.MOSS_META_INSTRUCTION)
    assert "<|Human|>: 你好<eoh>\n<|MOSS|>:" in protocol_text


def test_gptq_folders_are_refused_with_what_is_needed(tmp_path):
    folder, _, _ = write_tiny_moss_checkpoint(tmp_path / "moss-int4", wbits=4, groupsize=128)
    with pytest.raises(ModelLoadError, match=r"GPTQ.*wbits=4.*groupsize=128.*moss-moon-003-sft"):
        load(folder)
    result = moss("chat", "--model", str(folder), "--message", "hi", env={"MOSSLM_HOME": str(tmp_path)})
    assert result.returncode == 2 and "GPTQ" in result.stderr and "Traceback" not in result.stderr


def test_other_custom_code_folders_are_refused_without_asking(tmp_path):
    folder = tmp_path / "custom"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "telepathy", "auto_map": {
        "AutoModelForCausalLM": "modeling_telepathy.TelepathyForCausalLM"}}))
    with pytest.raises(ModelLoadError, match="never runs a checkpoint's code"):
        load(folder)


def test_a_broken_moss_config_is_a_clear_error(tmp_path):
    folder, cfg, _ = write_tiny_moss_checkpoint(tmp_path / "bad")
    (folder / "config.json").write_text(json.dumps({**cfg, "n_head": 6}))
    with pytest.raises(ModelLoadError, match="n_head"):
        load(folder)
    (folder / "vocab.json").unlink()
    with pytest.raises(ModelLoadError, match="vocab.json"):
        load(folder)


def test_moss_serve_answers_openai_requests_for_a_moss_folder(moss_folder, tmp_path):
    import socket
    import time
    import urllib.request

    folder, _, _ = moss_folder
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "mosslm", "serve", "--model", str(folder), "--host", "127.0.0.1",
                             "--port", str(port), "--temperature", "0", "--max-new-tokens", "6"],
                            env={**os.environ, "MOSSLM_HOME": str(tmp_path)}, stderr=subprocess.PIPE, text=True)
    try:
        body = json.dumps({"model": folder.name, "messages": [{"role": "user", "content": "你好"}]}).encode()
        deadline, out = time.time() + 120, None
        while out is None and time.time() < deadline and proc.poll() is None:
            try:
                req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=body,
                                             headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(req, timeout=60) as r:
                    out = json.loads(r.read())
            except OSError:
                time.sleep(0.3)
        assert out is not None, proc.stderr.read() if proc.poll() is not None else "server did not answer"
        assert out["choices"][0]["message"]["role"] == "assistant"
        assert out["usage"]["completion_tokens"] >= 1 and out["model"] == folder.name
    finally:
        proc.terminate()
        proc.wait(30)


def test_a_hub_id_loads_from_the_hugging_face_cache_offline(moss_folder, tmp_path):
    """`--model ORG/NAME` goes through huggingface_hub; here its cache is filled by hand, nothing downloads."""
    import shutil

    folder, _, _ = moss_folder
    commit = "0" * 40
    repo = tmp_path / "hf" / "hub" / "models--test-org--tiny-moss-moon"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(folder, repo / "snapshots" / commit)
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "MOSSLM_HOME": str(tmp_path)}
    result = moss("chat", "--model", "test-org/tiny-moss-moon", "--message", "你好", "--temperature", "0",
                  "--max-new-tokens", "4", env=env)
    assert result.returncode == 0, result.stderr
    assert f"loading {repo / 'snapshots' / commit}" in result.stderr
    missing = moss("chat", "--model", "test-org/not-cached", "--message", "hi", env=env)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert "could not fetch test-org/not-cached from the Hugging Face Hub" in missing.stderr
    assert "--model PATH" in missing.stderr


def test_moss_download_lists_what_it_fetches_and_where_larger_models_come_from(tmp_path):
    result = moss("download", env={"MOSSLM_HOME": str(tmp_path)})
    assert result.returncode == 0
    assert "smollm2" in result.stdout and "not downloaded" in result.stdout
    assert "fnlp/moss-moon-003-sft-plugin" in result.stdout and "Hugging Face Hub" in result.stdout
    no_model = moss("chat", "--message", "hi", env={"MOSSLM_HOME": str(tmp_path)})
    assert no_model.returncode == 2
    assert "once that verb lands" not in no_model.stderr
    assert "moss speedrun" in no_model.stderr and "moss download" in no_model.stderr
    assert "fnlp/moss-moon-003-sft-plugin" in no_model.stderr


def test_unknown_config_keys_are_reported_not_fatal(tmp_path, capsys):
    folder, cfg, _ = write_tiny_moss_checkpoint(tmp_path / "newer")
    (folder / "config.json").write_text(json.dumps({**cfg, "release_notes": "v2"}))
    assert load(folder).protocol == "moss"
    assert "ignoring MOSS config key(s) CodeGen has no use for: release_notes" in capsys.readouterr().err
