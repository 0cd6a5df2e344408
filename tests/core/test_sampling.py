"""The sampler against pure-Python re-computations: kept support, penalties, greedy, seeds, empirical frequencies."""
import math

import pytest
import torch
from hypothesis import assume, given, settings, strategies as st

from eaglefinch.rwkv_core.sampling import Penalties, SamplerConfig, sample_logits, sampling_probs


def reference_kept(row, cfg):
    """Kept ids and their probabilities, from the documented rule, in plain Python floats.

    Rank ids by probability of softmax(logits / T), lower id first among ties; keep the first
    min(top_k, n_p) ranks, n_p being the shortest prefix with mass >= top_p; renormalise.
    Returns (kept {id: prob}, cumulative masses along the ranking).
    """
    logits = [-math.inf if i in cfg.banned_tokens else x / cfg.temperature for i, x in enumerate(row)]
    m = max(logits)
    exps = [math.exp(x - m) for x in logits]
    p = [e / sum(exps) for e in exps]
    order = sorted(range(len(p)), key=lambda i: (-p[i], i))
    n = cfg.top_k if cfg.top_k > 0 else len(p)
    masses, mass = [], 0.0
    for i in order:
        mass += p[i]
        masses.append(mass)
    if cfg.top_p < 1:
        n_p = next((r + 1 for r, mass in enumerate(masses) if mass >= cfg.top_p), len(p))
        n = min(n, n_p)
    kept = [i for i in order[:n] if p[i] > 0]
    total = sum(p[i] for i in kept)
    return {i: p[i] / total for i in kept}, masses


@st.composite
def logits_and_config(draw):
    V = draw(st.integers(1, 12))
    # half-integer logits: exact ties happen often, near-ties (order flips from rounding) never
    rows = draw(st.lists(st.lists(st.integers(-6, 6), min_size=V, max_size=V), min_size=1, max_size=3))
    banned = draw(st.sets(st.integers(0, V - 1), max_size=V - 1))
    cfg = SamplerConfig(
        temperature=draw(st.sampled_from([0.3, 1.0, 1.7])),
        top_k=draw(st.integers(0, V + 2)),
        top_p=draw(st.one_of(st.floats(0, 1), st.sampled_from([0.0, 0.5, 1.0, 1.5]))),
        banned_tokens=tuple(sorted(banned)),
    )
    return torch.tensor(rows, dtype=torch.float32) * 0.5, cfg


@settings(max_examples=150, deadline=None)
@given(logits_and_config())
def test_kept_support_matches_reference(case):
    logits, cfg = case
    probs = sampling_probs(logits, cfg)
    assert probs.dtype == torch.float64 and probs.shape == logits.shape
    for row, got in zip(logits.tolist(), probs):
        kept, masses = reference_kept(row, cfg)
        # a cumulative mass within rounding of top_p could go either way
        assume(cfg.top_p >= 1 or all(abs(m - cfg.top_p) > 1e-9 for m in masses))
        assert set(torch.nonzero(got).flatten().tolist()) == set(kept)
        for i, p in kept.items():
            assert got[i].item() == pytest.approx(p, rel=1e-9, abs=1e-12)


def test_ties_keep_the_lowest_ids_on_a_large_vocabulary():
    # large rows with many ties: where an unstable sort would reorder equal probabilities
    logits = torch.randint(0, 3, (2, 3000), generator=torch.Generator().manual_seed(0)).float()
    for cfg in (SamplerConfig(top_k=1000), SamplerConfig(top_p=0.3), SamplerConfig(top_k=2000, top_p=0.6)):
        probs = sampling_probs(logits, cfg)
        for row, got in zip(logits.tolist(), probs):
            kept, _ = reference_kept(row, cfg)
            assert set(torch.nonzero(got).flatten().tolist()) == set(kept)


@pytest.mark.parametrize("top_p, n_kept", [(0.25, 1), (0.5, 2), (0.75, 3), (0.7500001, 4), (0.0, 1)])
def test_top_p_keeps_the_smallest_prefix_reaching_the_mass(top_p, n_kept):
    # four equal logits: probabilities are exactly 0.25, so prefix masses hit top_p exactly
    probs = sampling_probs(torch.zeros(1, 4), SamplerConfig(top_p=top_p))
    assert probs[0].tolist() == [1 / n_kept] * n_kept + [0.0] * (4 - n_kept)


@settings(max_examples=50, deadline=None)
@given(logits_and_config(), st.integers(0, 2**32))
def test_samples_lie_in_the_kept_support(case, seed):
    logits, cfg = case
    probs = sampling_probs(logits, cfg)
    ids = sample_logits(logits.repeat(50, 1), cfg, torch.Generator().manual_seed(seed))
    assert ids.dtype == torch.int64 and ids.shape == (50 * len(logits),)
    assert (probs.repeat(50, 1).gather(1, ids[:, None]) > 0).all()


@settings(max_examples=100, deadline=None)
@given(logits_and_config())
def test_temperature_zero_is_greedy_with_lowest_id_on_ties(case):
    logits, cfg = case
    cfg = SamplerConfig(temperature=0, top_k=cfg.top_k, top_p=cfg.top_p, banned_tokens=cfg.banned_tokens)
    ids = sample_logits(logits, cfg)
    for row, got in zip(logits.tolist(), ids.tolist()):
        allowed = [i for i in range(len(row)) if i not in cfg.banned_tokens]
        best = max(row[i] for i in allowed)
        assert got == min(i for i in allowed if row[i] == best)
    probs = sampling_probs(logits, cfg)
    assert torch.equal(probs, torch.nn.functional.one_hot(ids, logits.shape[1]).double())


def test_same_seed_same_samples():
    logits = torch.randn(64, 100, generator=torch.Generator().manual_seed(0))
    cfg = SamplerConfig(temperature=1.3, top_p=0.9, top_k=40)
    a = sample_logits(logits, cfg, torch.Generator().manual_seed(7))
    b = sample_logits(logits, cfg, torch.Generator().manual_seed(7))
    c = sample_logits(logits, cfg, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


# chi-square critical values at p = 0.001 for 3 and 5 degrees of freedom
CHI2_999 = {3: 16.27, 5: 20.52}


@pytest.mark.parametrize(
    "cfg, expected",
    [
        # top_p = 1 must not truncate (the official sampler's fp32 cutoff turns it greedy)
        (SamplerConfig(top_p=1.0), torch.softmax(torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0]), 0)),
        (SamplerConfig(top_p=1.0, temperature=0.5), torch.softmax(torch.tensor([4.0, 2.0, 1.0, 0.0, -2.0, -6.0]), 0)),
        (SamplerConfig(top_k=4, temperature=2.0), torch.softmax(torch.tensor([1.0, 0.5, 0.25, 0.0]), 0)),
    ],
)
def test_empirical_frequencies_match_the_distribution(cfg, expected):
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, -3.0]]).repeat(20000, 1)
    ids = sample_logits(logits, cfg, torch.Generator().manual_seed(0))
    counts = torch.bincount(ids, minlength=6).double()
    assert counts[len(expected) :].sum() == 0
    n_expected = expected.double() * len(ids)
    chi2 = (((counts[: len(expected)] - n_expected) ** 2) / n_expected).sum().item()
    assert chi2 < CHI2_999[len(expected) - 1]


# ---- penalties


def reference_penalised(logits, history, cfg, uncounted):
    """RWKV's penalties, step by step as in ChatRWKV: an occurrence dict per row."""
    out = []
    for row, ids in zip(logits.tolist(), history):
        occurrence = {}
        for n in ids:
            for k in occurrence:
                occurrence[k] *= cfg.penalty_decay
            occurrence[n] = occurrence.get(n, 0.0) + (0.0 if n in uncounted else 1.0)
        out.append([x - (cfg.presence_penalty + occurrence[i] * cfg.frequency_penalty if i in occurrence else 0.0) for i, x in enumerate(row)])
    return out


@settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(st.lists(st.integers(0, 7), min_size=3, max_size=3), max_size=12),
    presence=st.floats(-1, 2),
    frequency=st.floats(-1, 2),
    decay=st.floats(0.5, 1.0),
)
def test_penalties_match_the_official_rule(steps, presence, frequency, decay):
    cfg = SamplerConfig(presence_penalty=presence, frequency_penalty=frequency, penalty_decay=decay)
    uncounted = {2, 5}
    pen = Penalties(cfg, batch_size=3, vocab_size=8, uncounted_ids=sorted(uncounted))
    for ids in steps:
        pen.update(torch.tensor(ids))
    logits = torch.randn(3, 8, generator=torch.Generator().manual_seed(len(steps)))
    got = pen.apply(logits)
    history = [[ids[b] for ids in steps] for b in range(3)]
    expected = torch.tensor(reference_penalised(logits, history, cfg, uncounted))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # ids never generated in a row keep their logits bit for bit
    for b in range(3):
        for i in set(range(8)) - set(history[b]):
            assert got[b, i] == logits[b, i]


def test_fresh_penalties_change_nothing():
    cfg = SamplerConfig(presence_penalty=0.5, frequency_penalty=0.5)
    logits = torch.randn(2, 10)
    assert torch.equal(Penalties(cfg, 2, 10).apply(logits), logits)


def test_penalties_reject_wrong_shapes():
    pen = Penalties(SamplerConfig(), 2, 10)
    with pytest.raises(ValueError, match="shape"):
        pen.apply(torch.zeros(3, 10))
    with pytest.raises(ValueError, match="shape"):
        pen.update(torch.tensor([1, 2, 3]))


# ---- configuration errors


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(temperature=-0.1), "temperature"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(top_p=-0.5), "top_p"),
        (dict(top_k=-1), "top_k"),
        (dict(top_k=1.5), "top_k"),
        (dict(penalty_decay=0.0), "penalty_decay"),
        (dict(penalty_decay=1.5), "penalty_decay"),
        (dict(banned_tokens=(-1,)), "banned_tokens"),
    ],
)
def test_bad_config(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplerConfig(**kwargs)


def test_bad_logits_or_bans():
    with pytest.raises(ValueError, match="every token is banned"):
        sample_logits(torch.zeros(1, 3), SamplerConfig(banned_tokens=(0, 1, 2)))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        sample_logits(torch.zeros(1, 3), SamplerConfig(banned_tokens=(3,)))
    for cfg in (SamplerConfig(), SamplerConfig(temperature=0)):
        with pytest.raises(ValueError, match=r"\[B, V\]"):
            sample_logits(torch.zeros(3), cfg)
