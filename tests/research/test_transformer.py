"""The transformer baseline: causal, and its KV-cache path (prefill, decode, extend) equals the full
forward (the slow twin), in float64."""
import pytest
import torch

from eaglefinch.research.transformer import Transformer, TransformerConfig, build_model, rotate


def tiny_transformer(seed=0):
    torch.manual_seed(seed)
    return Transformer(TransformerConfig(vocab_size=50, n_layer=2, n_embd=32, head_size=8)).double().eval()


def test_future_tokens_do_not_change_past_logits():
    model = tiny_transformer()
    idx = torch.randint(0, 50, (2, 20))
    changed = idx.clone()
    changed[:, 12:] = torch.randint(0, 50, (2, 8))
    with torch.no_grad():
        a, b = model(idx), model(changed)
        cached_a, _ = model.prefill(idx)
        cached_b, _ = model.prefill(changed)
    torch.testing.assert_close(a[:, :12], b[:, :12], rtol=0, atol=1e-12)
    torch.testing.assert_close(cached_a[:, :12], cached_b[:, :12], rtol=0, atol=1e-12)
    # and the change is seen where it may be: the test could fail
    assert (a[:, 12:] - b[:, 12:]).abs().max() > 1e-3


@pytest.mark.parametrize("split", [1, 7, 19])
def test_prefill_then_decode_equals_full_forward(split):
    model = tiny_transformer()
    idx = torch.randint(0, 50, (3, 20))
    with torch.no_grad():
        full = model(idx)
        logits, cache = model.prefill(idx[:, :split], capacity=20)
        steps = [logits]
        for t in range(split, 20):
            step, cache = model.decode(idx[:, t], cache)
            steps.append(step[:, None])
    assert cache.length == 20
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=0, atol=1e-10)


def test_extending_by_chunks_equals_full_forward():
    """Chunks after the first take the explicit mask (new token i sees positions <= start + i)."""
    model = tiny_transformer()
    idx = torch.randint(0, 50, (2, 24))
    with torch.no_grad():
        full = model(idx)
        cache = model.empty_cache(2, 24)
        parts = []
        for a, b in [(0, 5), (5, 6), (6, 15), (15, 24)]:
            logits, cache = model.extend(idx[:, a:b], cache)
            parts.append(logits)
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=0, atol=1e-10)


def test_decoding_twice_from_one_cache_repeats_the_step():
    model = tiny_transformer()
    idx = torch.randint(0, 50, (1, 10))
    with torch.no_grad():
        _, cache = model.prefill(idx, capacity=11)
        first, longer = model.decode(torch.tensor([3]), cache)
        other, _ = model.decode(torch.tensor([4]), cache)
        again, _ = model.decode(torch.tensor([3]), cache)
    assert cache.length == 10 and longer.length == 11
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert (first - other).abs().max() > 1e-6


def test_the_cache_refuses_positions_beyond_its_capacity():
    model = tiny_transformer()
    _, cache = model.prefill(torch.randint(0, 50, (1, 4)))
    with pytest.raises(ValueError, match="holds 4 positions"):
        model.decode(torch.tensor([1]), cache)


def test_rotary_scores_depend_only_on_relative_position():
    torch.manual_seed(0)
    q, k = torch.randn(1, 2, 1, 16, dtype=torch.float64), torch.randn(1, 2, 1, 16, dtype=torch.float64)

    def score(i, j):
        return (rotate(q, torch.tensor([i]), 10000.0) * rotate(k, torch.tensor([j]), 10000.0)).sum()

    torch.testing.assert_close(score(3, 1), score(103, 101))
    torch.testing.assert_close(score(0, 0), (q * k).sum())
    assert abs(score(3, 1) - score(3, 2)) > 1e-6


def test_build_model_gives_equal_width_and_depth():
    for arch in ("eagle", "finch", "transformer"):
        model = build_model(arch, vocab_size=40, n_layer=3, n_embd=32, head_size=64)
        assert len(model.blocks) == 3 and model.emb.weight.shape == (40, 32)
    with pytest.raises(ValueError, match="unknown model"):
        build_model("mamba", 40, 2, 32)
