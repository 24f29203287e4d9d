"""The batching engine: exact greedy equality with transformers, seeds, prefix reuse, cancel, limits."""

import asyncio
import threading
import time

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from mosslm.engine import SamplingParams
from mosslm.engine.engine import Engine, EngineConfig, EngineFull, RequestTooLarge
from mosslm.model import build_model

GREEDY = {"temperature": 0.0}


@pytest.fixture(scope="module")
def llama(tiny_tokenizer):
    model = build_model("micro", tiny_tokenizer, seed=3, max_position_embeddings=512).float().eval()
    model.generation_config.eos_token_id = None
    return model


@pytest.fixture(scope="module")
def qwen2(tiny_tokenizer):
    torch.manual_seed(4)
    config = Qwen2Config(vocab_size=len(tiny_tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    model = Qwen2ForCausalLM(config).float().eval()
    model.generation_config.eos_token_id = None
    return model


def hf_greedy(model, prompt: list[int], n: int) -> list[int]:
    out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                         max_new_tokens=n, do_sample=False, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def prompts(tok) -> list[list[int]]:
    shared = "You are MOSS, a helpful assistant. 你好！Answer in the user's language. "
    texts = [shared + "长江有多长？", shared + "What is 12 times 7?", "abc", shared * 2 + "再见",
             "一二三四五六七八九十" * 4, shared + "What is 12 times 8?"]
    return [tok.encode(t, add_special_tokens=False) for t in texts]


@pytest.mark.parametrize("which", ["llama", "qwen2"])
def test_mixed_batch_matches_transformers_token_for_token(which, request, tiny_tokenizer):
    model = request.getfixturevalue(which)
    engine = Engine(model, tiny_tokenizer, EngineConfig(max_running=4, kv_budget_mb=16, max_seq_len=256,
                                                        prefill_chunk=24, packed_linears="always"))
    try:
        assert engine.packed  # the engine computes with oneDNN-packed weights; transformers with F.linear
        ps, maxes = prompts(tiny_tokenizer), [20, 9, 30, 14, 25, 18]
        handles = []
        for i, (p, m) in enumerate(zip(ps, maxes)):
            handles.append(engine.submit(p, SamplingParams(max_new_tokens=m, **GREEDY)))
            if i == 2:  # later requests join while the first ones are decoding
                next(iter(handles[0]))
        for p, m, h in zip(ps, maxes, handles):
            assert h.wait(60).token_ids == hf_greedy(model, p, m)
        # A second round reuses cached prefixes (in place and copied) and still matches.
        before = engine.stats()["prefix_hit_tokens"]
        again = [engine.submit(p, SamplingParams(max_new_tokens=12, **GREEDY)) for p in ps[:2] + ps[-1:]]
        for p, h in zip(ps[:2] + ps[-1:], again):
            assert h.wait(60).token_ids == hf_greedy(model, p, 12)
        assert engine.stats()["prefix_hit_tokens"] - before >= sum(len(p) for p in ps[:2]) - 2
    finally:
        engine.shutdown()


def test_seeded_sampling_does_not_depend_on_the_batch(llama, tiny_tokenizer):
    engine = Engine(llama, tiny_tokenizer, EngineConfig(max_running=8, kv_budget_mb=16, max_seq_len=256))
    try:
        p = prompts(tiny_tokenizer)[0]
        params = SamplingParams(max_new_tokens=24, temperature=1.0, top_p=0.95, top_k=0, seed=7)
        alone = engine.generate(p, params).token_ids
        noise = [engine.submit(q, SamplingParams(max_new_tokens=30, temperature=1.2, seed=i))
                 for i, q in enumerate(prompts(tiny_tokenizer))]
        crowded = engine.submit(p, params)
        assert crowded.wait(60).token_ids == alone
        assert engine.generate(p, SamplingParams(max_new_tokens=24, temperature=1.0, top_p=0.95, top_k=0,
                                                 seed=8)).token_ids != alone
        for h in noise:
            h.wait(60)
    finally:
        engine.shutdown()


def test_cancel_frees_the_slot_within_a_step(llama, tiny_tokenizer):
    engine = Engine(llama, tiny_tokenizer, EngineConfig(max_running=1, max_waiting=4, kv_budget_mb=16, max_seq_len=256))
    try:
        p = prompts(tiny_tokenizer)[1]
        long = engine.submit(p, SamplingParams(max_new_tokens=200, **GREEDY))
        waiting = engine.submit(p, SamplingParams(max_new_tokens=3, **GREEDY))
        stream = iter(long)
        seen = [next(stream), next(stream)]
        steps = engine.stats()["steps"]
        long.cancel()
        assert waiting.wait(30).finish_reason == "length"  # it got the only slot
        assert long.result.finish_reason == "cancelled" and len(long.result.token_ids) < 200
        assert "".join(seen + list(stream)) == long.result.text  # the cancelled stream ends, nothing lost
        # cancelled at most one step after the call, then the waiting request ran its 3 steps
        assert engine.stats()["steps"] - steps <= 2 + 3 + 1
        assert engine.stats()["running"] == 0
    finally:
        engine.shutdown()


def test_full_queue_is_refused_at_once(llama, tiny_tokenizer):
    engine = Engine(llama, tiny_tokenizer, EngineConfig(max_running=1, max_waiting=1, kv_budget_mb=16, max_seq_len=256))
    try:
        p = prompts(tiny_tokenizer)[2]
        a = engine.submit(p, SamplingParams(max_new_tokens=150, **GREEDY))
        next(iter(a))  # running
        b = engine.submit(p, SamplingParams(max_new_tokens=5, **GREEDY))  # waiting
        t = time.monotonic()
        with pytest.raises(EngineFull, match="max_running.*max_waiting"):
            engine.submit(p, SamplingParams(max_new_tokens=5, **GREEDY))
        assert time.monotonic() - t < 0.1
        a.cancel()
        assert b.wait(30).finish_reason == "length"
    finally:
        engine.shutdown()


def test_requests_that_can_never_fit_get_a_clear_error(llama, tiny_tokenizer):
    engine = Engine(llama, tiny_tokenizer, EngineConfig(max_running=2, kv_budget_mb=4, max_seq_len=64))
    try:
        with pytest.raises(RequestTooLarge, match="at most 64 tokens"):
            engine.submit(list(range(10, 74)), SamplingParams(max_new_tokens=4))
        h = engine.submit(list(range(10, 60)), SamplingParams(max_new_tokens=100, **GREEDY))
        assert len(h.wait(30).token_ids) == 64 - 50 and h.result.finish_reason == "length"  # capped by the slot
    finally:
        engine.shutdown()
    with pytest.raises(ValueError, match="KV budget"):
        Engine(llama, tiny_tokenizer, EngineConfig(kv_budget_mb=0.001, max_seq_len=512))


def test_the_kv_cache_dtype_is_checked_and_a_narrow_one_keeps_the_tokens(llama, tiny_tokenizer):
    with pytest.raises(ValueError, match="kv_dtype must be"):
        Engine(llama, tiny_tokenizer, EngineConfig(kv_dtype="int8"))
    with pytest.raises(ValueError, match="needs mosslm's own decoder"):  # transformers' layers: no mixed dtypes
        Engine(llama, tiny_tokenizer, EngineConfig(kv_dtype="fp16", own_decoder=False, kv_budget_mb=8))
    tokens = {}
    for kv in ("auto", "fp16"):
        engine = Engine(llama, tiny_tokenizer, EngineConfig(max_running=4, kv_budget_mb=8, max_seq_len=128,
                                                            kv_dtype=kv))
        try:
            # no int4/int8 decode step here: auto keeps the model's fp32
            assert engine.kv.k[0].dtype == (torch.float32 if kv == "auto" else torch.float16)
            handles = [engine.submit(p, SamplingParams(max_new_tokens=16, **GREEDY)) for p in prompts(tiny_tokenizer)]
            tokens[kv] = [h.wait(60).token_ids for h in handles]
        finally:
            engine.shutdown()
    assert tokens["fp16"] == tokens["auto"]


def test_async_streaming_and_concurrent_threads(llama, tiny_tokenizer):
    engine = Engine(llama, tiny_tokenizer, EngineConfig(max_running=4, kv_budget_mb=16, max_seq_len=256))
    try:
        p = prompts(tiny_tokenizer)[0]

        async def collect():
            h = engine.submit(p, SamplingParams(max_new_tokens=16, **GREEDY))
            return "".join([d async for d in h]), h.result.text

        text, full = asyncio.run(collect())
        assert text == full and text
        results = [None] * 4

        def worker(i):
            results[i] = engine.generate(p, SamplingParams(max_new_tokens=16, **GREEDY)).text

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert results == [full] * 4
    finally:
        engine.shutdown()


def test_packed_weights_serve_only_the_engine_thread(tiny_tokenizer, monkeypatch):
    from mosslm.engine import cpu

    model = build_model("micro", tiny_tokenizer, seed=5, max_position_embeddings=512).float().eval()
    ids = torch.tensor([tiny_tokenizer.encode("你好, MOSS! 12*7=?", add_special_tokens=False)])
    n_linears = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    with torch.inference_mode():
        before_prompt, before_last = model(ids).logits, model(ids[:, -1:]).logits
        assert cpu.pack_linears(model)
        assert model(ids).logits.equal(before_prompt)  # outside engine_calls(): plain F.linear, bit for bit
        packed, calls = cpu._packed_linear, []
        monkeypatch.setattr(cpu, "_packed_linear", lambda x, w, b: calls.append(x.shape) or packed(x, w, b))
        with cpu.engine_calls():
            prompt, last = model(ids).logits, model(ids[:, -1:]).logits
        assert len(calls) == 2 * n_linears  # every linear, for the prompt and for the single row
        model(ids[:, -1:])
        assert len(calls) == 2 * n_linears  # off again after the block
    torch.testing.assert_close(prompt, before_prompt, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(last, before_last, rtol=1e-4, atol=1e-4)


def test_packing_is_skipped_for_models_too_large_to_copy(tiny_tokenizer, monkeypatch):
    from mosslm.engine import cpu

    monkeypatch.setattr(cpu, "MAX_PACKED_BYTES", 1000)
    model = build_model("micro", tiny_tokenizer, seed=5).float().eval()
    assert not cpu.pack_linears(model)
    assert not any(hasattr(m, "_mosslm_packed") for m in model.modules())


def test_release_openmp_team_frees_the_idle_workers():
    import os

    from mosslm.engine import cpu

    if torch.get_num_threads() < 2 or cpu._openmp_runtime() is None:
        pytest.skip("needs an OpenMP torch build and at least 2 threads")

    def run_parallel_op_and_count() -> tuple[int, int]:
        torch.randn(512, 512) @ torch.randn(512, 512)  # leaves this thread an OpenMP team
        torch.randn(1 << 20).add_(1)
        before = len(os.listdir("/proc/self/task"))
        assert cpu.release_openmp_team()
        deadline = time.monotonic() + 2
        while len(os.listdir("/proc/self/task")) >= before and time.monotonic() < deadline:
            time.sleep(0.01)  # exiting threads may linger a moment
        return before, len(os.listdir("/proc/self/task"))

    counts: list[tuple[int, int]] = []
    worker = threading.Thread(target=lambda: counts.append(run_parallel_op_and_count()))
    worker.start()
    worker.join()
    before, after = counts[0]
    assert after < before


def test_packing_is_kept_only_where_it_measures_faster(tiny_tokenizer):
    from mosslm.engine import cpu

    model = build_model("micro", tiny_tokenizer, seed=5).float().eval()
    result = cpu.pack_linears(model, rows_hint=8, measure=True)
    t = result.timings
    assert set(t) == {"stock_1", "packed_1", "stock_8", "packed_8"} and all(v > 0 for v in t.values())
    faster = t["packed_1"] + t["packed_8"] < t["stock_1"] + t["stock_8"]
    assert result.packed == faster, result.reason
    assert any(hasattr(m, "_mosslm_packed") for m in model.modules()) == faster
    never = Engine(model, tiny_tokenizer, EngineConfig(max_running=2, kv_budget_mb=4, max_seq_len=64,
                                                       packed_linears="never"))
    try:
        assert not never.packed and never.packing is None
    finally:
        never.shutdown()
    with pytest.raises(ValueError, match="packed_linears must be auto, always or never"):
        Engine(model, tiny_tokenizer, EngineConfig(packed_linears="sometimes"))
