"""Engine logprobs: generated-token and prompt logprobs equal a plain forward; n > 1 shares the prompt KV."""

import pytest
import torch

from mosslm.engine import SamplingParams
from mosslm.engine.engine import Engine, EngineConfig
from mosslm.engine.logprobs import TokenLogprob
from mosslm.model import build_model

PROMPT = "You are MOSS, a helpful assistant. 你好！Answer in the user's language. 长江有多长？"


@pytest.fixture(scope="module")
def model(tiny_tokenizer):
    m = build_model("micro", tiny_tokenizer, seed=3, max_position_embeddings=512).float().eval()
    m.generation_config.eos_token_id = None
    return m


def reference(model, ids: list[int]) -> torch.Tensor:
    """log_softmax of a plain transformers forward: row i is the distribution after ids[: i + 1]."""
    with torch.inference_mode():
        return torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)


def check(entry: TokenLogprob, ref_row: torch.Tensor, token: int, k: int) -> None:
    assert entry.token_id == token
    assert entry.logprob == pytest.approx(ref_row[token].item(), abs=1e-4)
    values, ids = ref_row.topk(k)
    assert len(entry.top) == k
    assert [t for t, _ in entry.top] == ids.tolist()
    assert [v for _, v in entry.top] == pytest.approx(values.tolist(), abs=1e-4)


def test_params_validate_the_logprob_counts():
    assert SamplingParams(logprobs=0, prompt_logprobs=20).logprobs == 0
    for bad in (-1, 21, True, 1.5, "3"):
        with pytest.raises(ValueError, match="logprobs must be None"):
            SamplingParams(logprobs=bad)
        with pytest.raises(ValueError, match="prompt_logprobs must be None"):
            SamplingParams(prompt_logprobs=bad)


@pytest.mark.parametrize("sampling", [{"temperature": 0.0},
                                      {"temperature": 1.3, "top_k": 5, "repetition_penalty": 1.5, "seed": 11}])
def test_generated_logprobs_are_the_raw_model_distribution(model, tiny_tokenizer, sampling):
    engine = Engine(model, tiny_tokenizer, EngineConfig(max_running=4, kv_budget_mb=16, max_seq_len=256))
    try:
        prompt = tiny_tokenizer.encode(PROMPT, add_special_tokens=False)
        noise = engine.submit(prompt[:20], SamplingParams(max_new_tokens=30, temperature=1.0, seed=1))
        h = engine.submit(prompt, SamplingParams(max_new_tokens=24, logprobs=3, **sampling))
        streamed, covered = [], 0
        for delta in h:  # the list grows in step with the stream and covers each delta's tokens
            assert h.streamed_tokens > covered and len(h.logprobs) >= h.streamed_tokens
            streamed += h.logprobs[covered: h.streamed_tokens]
            covered = h.streamed_tokens
        result = h.result
        assert noise.wait(60).logprobs is None  # off unless asked
        assert len(result.token_ids) == 24 and result.logprobs is h.logprobs and streamed == result.logprobs
        ref = reference(model, prompt + result.token_ids)
        for i, (token, entry) in enumerate(zip(result.token_ids, result.logprobs)):
            check(entry, ref[len(prompt) - 1 + i], token, 3)  # before penalty / temperature / top-k
        if sampling["temperature"] == 0.0:
            assert all(e.top[0][0] == e.token_id for e in result.logprobs)
        assert result.prompt_logprobs is None
    finally:
        engine.shutdown()


@pytest.mark.parametrize("prefill_chunk", [7, 256])
def test_prompt_logprobs_equal_a_plain_forward(model, tiny_tokenizer, prefill_chunk):
    engine = Engine(model, tiny_tokenizer, EngineConfig(max_running=4, kv_budget_mb=16, max_seq_len=256,
                                                        prefill_chunk=prefill_chunk))
    try:
        prompt = tiny_tokenizer.encode(PROMPT, add_special_tokens=False)
        assert len(prompt) > 2 * 7
        engine.generate(prompt, SamplingParams(max_new_tokens=2, temperature=0.0))  # leaves the prefix cached
        hits = engine.stats()["prefix_hit_tokens"]
        other = engine.submit(prompt[:-3], SamplingParams(max_new_tokens=5, temperature=0.0))  # in the same batch
        g = engine.generate(prompt, SamplingParams(max_new_tokens=1, temperature=0.0, prompt_logprobs=2))
        other.wait(60)
        assert engine.stats()["prefix_hit_tokens"] - hits <= len(prompt) - 4  # only `other` reused the cache
        assert len(g.prompt_logprobs) == len(prompt) and g.prompt_logprobs[0] is None
        ref = reference(model, prompt)
        for i in range(1, len(prompt)):
            check(g.prompt_logprobs[i], ref[i - 1], prompt[i], 2)
        assert g.token_ids == [int(ref[-1].argmax())] and g.logprobs is None
    finally:
        engine.shutdown()


def test_n_copies_of_a_prompt_share_its_kv(model, tiny_tokenizer):
    """n > 1 is the same prompt submitted n times: the copies wait one prefill and reuse its KV."""
    engine = Engine(model, tiny_tokenizer, EngineConfig(max_running=4, kv_budget_mb=16, max_seq_len=256))
    try:
        prompt = tiny_tokenizer.encode(PROMPT, add_special_tokens=False)
        params = [SamplingParams(max_new_tokens=12, temperature=1.0, top_k=0, seed=s) for s in (1, 2, 3)]
        hits = engine.slots.prefix_hits
        handles = [engine.submit(prompt, p) for p in params]
        results = [h.wait(60) for h in handles]
        assert engine.slots.prefix_hits - hits >= 2 * (len(prompt) - 1)  # the 2nd and 3rd reused the prompt
        assert all(len(r.token_ids) == 12 for r in results)
        assert len({tuple(r.token_ids) for r in results}) == 3
        alone = [engine.generate(prompt, p).token_ids for p in params]
        assert [r.token_ids for r in results] == alone  # sharing the prompt KV changes no token
    finally:
        engine.shutdown()
