"""Shared fixtures: a tiny tokenizer and checkpoint built here, never downloaded."""

from __future__ import annotations

import random
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SAMPLES = SHARED / "data" / "moss-sft-samples"


def sample_files() -> list[Path]:
    if not SAMPLES.is_dir():
        pytest.skip(f"the MOSS SFT samples are not here ({SAMPLES}); they come with the project's "
                    "shared/ folder in CI, not with a plain clone")
    return sorted(SAMPLES.glob("*.jsonl"))


def bilingual_corpus(n: int = 400, seed: int = 0) -> list[str]:
    """A small project-written corpus with Chinese, English, digits and code."""
    rng = random.Random(seed)
    zh = ["你好，我是MOSS。", "今天天气很好。", "请帮我计算一下。", "这个问题很有意思。", "我们一起学习语言模型。",
          "北京是中国的首都。", "谢谢你的帮助！", "数学和编程都很重要。"]
    en = ["Hello, I am MOSS.", "The weather is nice today.", "Please help me calculate this.",
          "Paris is the capital of France.", "Language models predict the next token.",
          "def add(a, b):\n    return a + b\n", "Thanks for your help!"]
    out = []
    for _ in range(n):
        a, b = rng.randint(0, 9999), rng.randint(0, 9999)
        out.append(f"{rng.choice(zh)} {rng.choice(en)} {a}*{b}={a * b} 😀🎉")
    return out


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from mosslm.tokenizer import train_tokenizer

    return train_tokenizer(bilingual_corpus(), vocab_size=600, min_frequency=2)


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_tokenizer, tmp_path_factory):
    from mosslm.model import build_model, save_checkpoint

    model = build_model("micro", tiny_tokenizer, seed=0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    save_checkpoint(model, tiny_tokenizer, path, preset="mosslm")
    return path


def memorize(tokenizer, texts: list[str], steps: int = 400, seed: int = 1):
    """A micro model trained in seconds to reproduce these exact texts (real weights, real training)."""
    import torch

    from mosslm.model import build_model

    rows = [tokenizer.encode(t, add_special_tokens=False) for t in texts]
    width = max(map(len, rows))
    pad = tokenizer.pad_token_id or 0
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    labels = torch.tensor([r + [-100] * (width - len(r)) for r in rows])
    model = build_model("micro", tokenizer, seed=seed, max_position_embeddings=1024)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        loss = model(input_ids=ids, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if loss.item() < 0.02:
            break
    return model.eval()


# ---------------------------------------------------------------- a served model that calls tools

WEATHER = {"type": "function", "function": {
    "name": "Weather", "description": "Get the current weather for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
CALC_Q, WEATHER_Q = "1234*5678等于多少?", "What's the weather in Paris?"
WEATHER_REPLY = "It is 22°C and sunny in Paris."


def meta_with(plugins: dict) -> str:
    from mosslm import protocol

    custom = [p.capability for n, p in plugins.items() if n not in protocol.PLUGINS]
    return protocol.meta_instruction("mosslm", [n for n in plugins if n in protocol.PLUGINS], custom=custom)


@pytest.fixture(scope="session")
def tool_model(tiny_tokenizer, tmp_path_factory):
    """A micro model trained here to call the server's Calculate and a client's Weather tool."""
    from mosslm import protocol
    from mosslm.model import save_checkpoint
    from mosslm.plugins.registry import BUILTINS
    from mosslm.serve.openai_tools import client_plugins

    meta = meta_with({"Calculate": BUILTINS["Calculate"], **client_plugins([WEATHER])})
    calc = protocol.Turn(CALC_Q, "1234*5678=7006652。", plugin=True, thoughts="需要计算",
                         commands='Calculate("1234*5678")', results="Calculate(\"1234*5678\") => '7006652'\n")
    weather = protocol.Turn(WEATHER_Q, WEATHER_REPLY, plugin=True, thoughts="I need the weather.",
                            commands='Weather("Paris")', results='Weather("Paris") => 22°C, sunny\n')
    model = memorize(tiny_tokenizer, [protocol.Conversation(meta, [t]).render() for t in (calc, weather)])
    path = tmp_path_factory.mktemp("tools") / "tool-model"
    save_checkpoint(model, tiny_tokenizer, path, preset="mosslm", metadata={"plugins": ["Calculate"]})
    return path


@contextmanager
def serving(app):
    """A real uvicorn server for `app` on a free 127.0.0.1 port, in a thread; yields its URL."""
    import socket
    import threading
    import time

    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    http = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical"))
    thread = threading.Thread(target=http.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not http.started and time.time() < deadline:
        time.sleep(0.05)
    assert http.started, "the test server did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        http.should_exit = True
        thread.join(10)


@pytest.fixture(scope="session")
def webchat_model(tiny_tokenizer, tmp_path_factory):
    """A micro model that answers the web chat test prompts (see webchat_fixtures)."""
    from webchat_fixtures import build_webchat_model

    return build_webchat_model(tmp_path_factory.mktemp("webchat") / "webchat-model", tiny_tokenizer)


@pytest.fixture
def torch_quant_kernels(monkeypatch):
    """int8 and int4 layers on torch's own CPU kernels instead of mosslm's (csrc/q4_cpu.cpp), for this test."""
    from mosslm.quant import q4_kernel

    monkeypatch.setenv("MOSSLM_Q4_KERNEL", "0")
    q4_kernel.reset()
    yield
    monkeypatch.delenv("MOSSLM_Q4_KERNEL")
    q4_kernel.reset()
