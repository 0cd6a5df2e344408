"""The sampler against pure-Python re-computations: kept support, penalties, greedy, seeds, empirical frequencies."""
import math

import pytest
import torch
from hypothesis import assume, given, settings, strategies as st

from eaglefinch.rwkv_core.sampling import (BatchSampler, Penalties, SamplerConfig, counter_uniforms, sample_logits,
                                            sampling_probs)


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


# chi-square critical values at p = 0.001 for 2, 3 and 5 degrees of freedom
CHI2_999 = {2: 13.82, 3: 16.27, 5: 20.52}


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


# ---- BatchSampler: per-row settings, seeds and counts in device tensors


def python_splitmix64(state):
    """Reference splitmix64 in plain Python integers: (next state, output) of one step."""
    mask = (1 << 64) - 1
    state = (state + 0x9E3779B97F4A7C15) & mask
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return state, z ^ (z >> 31)


def as_int64(value):
    """The int64 with the same bits as the unsigned 64-bit `value`."""
    return value - (1 << 64) if value >= 1 << 63 else value


@pytest.mark.parametrize("seed, step", [(0, 0), (7, 3), (2**63, 1), (2**64 - 1, 12345)])
def test_counter_uniforms_are_the_documented_splitmix64_streams(seed, step):
    # key: output number step + 1 of splitmix64 from `seed`; u[id]: output number id + 1 from `key`
    state = seed
    for _ in range(step + 1):
        state, key = python_splitmix64(state)
    expected = []
    for _ in range(5):
        key, bits = python_splitmix64(key)
        expected.append(((bits >> 12) + 0.5) / 2**52)
    got = counter_uniforms(torch.tensor([as_int64(seed)]), torch.tensor([step]), 5)
    assert got.dtype == torch.float64 and got[0].tolist() == expected


def test_counter_uniforms_are_spread_over_the_unit_interval():
    seeds = torch.arange(100).repeat_interleave(10)
    steps = torch.arange(10).repeat(100)
    u = counter_uniforms(seeds, steps, 100).flatten()  # 100,000 numbers
    assert u.min() > 0 and u.max() < 1
    assert u.unique().numel() == u.numel()
    standard_error = (1 / 12 / u.numel()) ** 0.5
    assert abs(u.mean().item() - 0.5) < 4 * standard_error
    assert abs(u.var().item() - 1 / 12) < 0.002
    # 20 equal bins: chi-square at p = 0.001 for 19 degrees of freedom
    counts = torch.histc(u, bins=20, min=0, max=1).double()
    assert (((counts - u.numel() / 20) ** 2) / (u.numel() / 20)).sum() < 43.82


@st.composite
def batch_case(draw, temperatures=(0.0, 0.3, 1.0, 1.7)):
    """A small vocabulary, per-row configs and seeds, uncounted ids, and steps of (rows, logits)."""
    V = draw(st.integers(1, 10))
    n_rows = draw(st.integers(1, 4))
    cfgs = [
        SamplerConfig(
            temperature=draw(st.sampled_from(temperatures)),
            top_k=draw(st.integers(0, V + 2)),
            top_p=draw(st.one_of(st.floats(0, 1), st.sampled_from([0.0, 0.5, 1.0, 1.5]))),
            presence_penalty=draw(st.floats(-1, 2)),
            frequency_penalty=draw(st.floats(-1, 2)),
            penalty_decay=draw(st.floats(0.5, 1.0)),
            banned_tokens=tuple(sorted(draw(st.sets(st.integers(0, V - 1), max_size=V - 1)))),
        )
        for _ in range(n_rows)
    ]
    seeds = [draw(st.integers(0, 2**64 - 1)) for _ in range(n_rows)]
    uncounted = draw(st.sets(st.integers(0, V - 1)))
    steps = []
    for _ in range(draw(st.integers(1, 5))):
        order = draw(st.permutations(range(n_rows)))
        rows = order[: draw(st.integers(1, n_rows))]
        # half-integer logits: exact ties are common
        logits = draw(st.lists(st.lists(st.integers(-6, 6), min_size=V, max_size=V), min_size=len(rows), max_size=len(rows)))
        steps.append((rows, torch.tensor(logits, dtype=torch.float32) * 0.5))
    return V, cfgs, seeds, sorted(uncounted), steps


def configured_sampler(V, cfgs, seeds, uncounted=(), max_rows=None):
    """A BatchSampler with row r configured as (cfgs[r], seeds[r])."""
    sampler = BatchSampler(max_rows or len(cfgs), V, uncounted_ids=uncounted)
    for row, (cfg, seed) in enumerate(zip(cfgs, seeds)):
        sampler.configure(row, cfg, seed)
    return sampler


@settings(max_examples=150, deadline=None)
@given(batch_case())
def test_batch_probs_equal_the_reference_row_by_row(case):
    V, cfgs, seeds, uncounted, steps = case
    sampler = configured_sampler(V, cfgs, seeds, uncounted)
    references = [Penalties(cfg, 1, V, uncounted_ids=uncounted) for cfg in cfgs]
    for rows, logits in steps:
        rows_t = torch.tensor(rows)
        got = sampler.probs(logits, rows_t)
        assert got.dtype == torch.float64 and got.shape == logits.shape
        ids = sampler.sample(logits, rows_t)
        assert ids.dtype == torch.int64 and ids.shape == (len(rows),)
        for i, row in enumerate(rows):
            expected = sampling_probs(references[row].apply(logits[i : i + 1]), cfgs[row])[0]
            assert torch.equal(got[i], expected), (row, got[i], expected)
            assert expected[ids[i]] > 0
            references[row].update(ids[i : i + 1])  # the same history for both


@settings(max_examples=100, deadline=None)
@given(batch_case(temperatures=(0.0,)))
def test_greedy_rows_equal_the_reference_sample_logits(case):
    V, cfgs, seeds, uncounted, steps = case
    sampler = configured_sampler(V, cfgs, seeds, uncounted)
    references = [Penalties(cfg, 1, V, uncounted_ids=uncounted) for cfg in cfgs]
    for rows, logits in steps:
        ids = sampler.sample(logits, torch.tensor(rows))
        for i, row in enumerate(rows):
            expected = sample_logits(references[row].apply(logits[i : i + 1]), cfgs[row])
            assert ids[i] == expected[0]
            references[row].update(expected)


def test_batch_top_p_keeps_the_smallest_prefix_reaching_the_mass_per_row():
    # four equal logits: probabilities are exactly 0.25, so prefix masses hit each row's top_p exactly
    top_ps, n_kept = [0.25, 0.5, 0.75, 0.7500001, 0.0, 1.0], [1, 2, 3, 4, 1, 4]
    sampler = configured_sampler(4, [SamplerConfig(top_p=p) for p in top_ps], range(len(top_ps)))
    probs = sampler.probs(torch.zeros(len(top_ps), 4), torch.arange(len(top_ps)))
    assert probs.tolist() == [[1 / n] * n + [0.0] * (4 - n) for n in n_kept]


MIXED_CONFIGS = [
    SamplerConfig(),
    SamplerConfig(temperature=0),
    SamplerConfig(temperature=1.3, top_p=0.9, top_k=20),
    SamplerConfig(temperature=0.7, top_p=0.5, presence_penalty=0.4, frequency_penalty=0.3, banned_tokens=(0, 5)),
    SamplerConfig(temperature=0, frequency_penalty=1.0, banned_tokens=(1,)),
    SamplerConfig(temperature=2.0, top_k=3),
]


def test_a_rows_draws_do_not_depend_on_the_rows_sampled_with_it():
    V, n_steps, n_rows = 40, 12, len(MIXED_CONFIGS)
    seeds = [11, 11, 12, 13, 14, 2**64 - 1]
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(n_steps, n_rows, V, generator=generator) * 2  # logits[step, row]
    # each row alone, in a sampler where no other row is even configured
    alone = []
    for row, (cfg, seed) in enumerate(zip(MIXED_CONFIGS, seeds)):
        sampler = BatchSampler(n_rows, V)
        sampler.configure(row, cfg, seed)
        alone.append([sampler.sample(logits[t, row : row + 1], torch.tensor([row])).item() for t in range(n_steps)])
    # all rows together, in a new order each step, and in two groups of random membership
    together = configured_sampler(V, MIXED_CONFIGS, seeds)
    grouped = configured_sampler(V, MIXED_CONFIGS, seeds, max_rows=8)
    got_together = [[None] * n_steps for _ in range(n_rows)]
    got_grouped = [[None] * n_steps for _ in range(n_rows)]
    for t in range(n_steps):
        order = torch.randperm(n_rows, generator=generator)
        for row, got in zip(order.tolist(), together.sample(logits[t, order], order).tolist()):
            got_together[row][t] = got
        for group in order.tensor_split(2):
            for row, got in zip(group.tolist(), grouped.sample(logits[t, group], group).tolist()):
                got_grouped[row][t] = got
    assert got_together == alone and got_grouped == alone
    assert len({tuple(ids) for ids in alone}) == n_rows  # the rows drew different things


def test_same_seed_same_ids_and_another_seed_other_ids():
    V, n_steps = 100, 50
    logits = torch.randn(n_steps, 1, V, generator=torch.Generator().manual_seed(1))
    cfg = SamplerConfig(temperature=1.0, top_p=0.95)

    def draws(seed):
        sampler = BatchSampler(4, V)
        sampler.configure(2, cfg, seed)
        return [sampler.sample(logits[t], torch.tensor([2])).item() for t in range(n_steps)]

    assert draws(7) == draws(7)
    assert draws(7) != draws(8)
    assert len(set(draws(7))) > 10
    # configure starts the row over: its step counter is back to 0
    sampler = BatchSampler(1, V)
    sampler.configure(0, cfg, 7)
    first = [sampler.sample(logits[t], torch.tensor([0])).item() for t in range(5)]
    sampler.configure(0, cfg, 7)
    assert [sampler.sample(logits[t], torch.tensor([0])).item() for t in range(5)] == first



@pytest.mark.parametrize(
    "cfg, n_kept",
    [
        (SamplerConfig(top_p=1.0), 6),
        (SamplerConfig(top_p=1.0, temperature=0.5), 6),
        (SamplerConfig(top_k=4, temperature=2.0), 4),
        (SamplerConfig(top_p=0.8), 3),
    ],
)
def test_batch_empirical_frequencies_match_the_distribution(cfg, n_kept):
    # 1000 rows with seeds 0..999, 20 steps each: 20,000 draws, the same every run
    n_rows, n_steps = 1000, 20
    sampler = configured_sampler(6, [cfg] * n_rows, range(n_rows))
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, -3.0]]).repeat(n_rows, 1)
    rows = torch.arange(n_rows)
    expected = sampling_probs(logits[:1], cfg)[0]
    assert torch.equal(sampler.probs(logits, rows), expected.repeat(n_rows, 1))
    ids = torch.cat([sampler.sample(logits, rows) for _ in range(n_steps)])
    counts = torch.bincount(ids, minlength=6).double()
    assert counts[n_kept:].sum() == 0
    n_expected = expected[:n_kept] * len(ids)
    chi2 = (((counts[:n_kept] - n_expected) ** 2) / n_expected).sum().item()
    assert chi2 < CHI2_999[n_kept - 1]


def test_batch_penalty_counts_follow_the_reference():
    V, uncounted = 8, [2, 5]
    cfgs = [
        SamplerConfig(presence_penalty=0.5, frequency_penalty=0.5, penalty_decay=0.9),
        SamplerConfig(presence_penalty=0.5, frequency_penalty=0.5),
        SamplerConfig(temperature=0, frequency_penalty=0.2, penalty_decay=0.5),
    ]
    sampler = configured_sampler(V, cfgs, [1, 2, 3], uncounted)
    references = [Penalties(cfg, 1, V, uncounted_ids=uncounted) for cfg in cfgs]
    for step in range(10):
        rows = [0, 1, 2] if step % 3 else [2, 0]  # row 1 sits some steps out: its counts wait
        ids = sampler.sample(torch.zeros(len(rows), V), torch.tensor(rows))
        for i, row in enumerate(rows):
            references[row].update(ids[i : i + 1])
    for row, reference in enumerate(references):
        assert torch.equal(sampler.counts[row], reference.counts[0])
        assert torch.equal(sampler.seen[row], reference.seen[0])
        assert sampler.step[row] == (10 if row != 1 else 6)
    assert sampler.seen[:2, uncounted].any() and (sampler.counts[:, uncounted] == 0).all()
    # configure clears the row's history and nothing else
    sampler.configure(0, cfgs[0], 1)
    assert not sampler.seen[0].any() and (sampler.counts[0] == 0).all() and sampler.step[0] == 0
    assert torch.equal(sampler.counts[1], references[1].counts[0])


def test_batch_sampler_errors():
    with pytest.raises(ValueError, match="max_rows"):
        BatchSampler(0, 10)
    with pytest.raises(ValueError, match="vocab_size"):
        BatchSampler(2, 0)
    with pytest.raises(ValueError, match="uncounted id 10 is outside the vocabulary of 10"):
        BatchSampler(2, 10, uncounted_ids=[3, 10])
    sampler = BatchSampler(4, 10)
    for row in (-1, 4, 1.5):
        with pytest.raises(ValueError, match=r"row must be an integer in \[0, 4\)"):
            sampler.configure(row, SamplerConfig(), 0)
    for seed in (-1, 2**64, 0.5):
        with pytest.raises(ValueError, match="seed must be an integer in"):
            sampler.configure(0, SamplerConfig(), seed)
    with pytest.raises(TypeError, match="SamplerConfig"):
        sampler.configure(0, {"temperature": 1.0}, 0)
    with pytest.raises(ValueError, match="banned token 10 is outside the vocabulary of 10"):
        sampler.configure(0, SamplerConfig(banned_tokens=(10,)), 0)
    with pytest.raises(ValueError, match="every token is banned"):
        sampler.configure(0, SamplerConfig(banned_tokens=tuple(range(10))), 0)
    assert not sampler.configured.any()  # a refused configuration changes nothing
    sampler.configure(0, SamplerConfig(), 0)
    sampler.configure(1, SamplerConfig(), 0)
    bad_calls = [
        (torch.zeros(10), torch.tensor([0]), r"logits must be \[n, 10\]"),
        (torch.zeros(1, 9), torch.tensor([0]), r"logits must be \[n, 10\]"),
        (torch.zeros(1, 10, dtype=torch.int64), torch.tensor([0]), "floating point"),
        (torch.zeros(2, 10), torch.tensor([0]), r"logits \[2, 10\] and rows \[1\] must have the same length"),
        (torch.zeros(1, 10), torch.tensor([[0]]), "rows must be a 1-D int64"),
        (torch.zeros(1, 10), torch.tensor([0], dtype=torch.int32), "rows must be a 1-D int64"),
        (torch.zeros(1, 10), torch.tensor([4]), r"rows must be in \[0, 4\)"),
        (torch.zeros(1, 10), torch.tensor([-1]), r"rows must be in \[0, 4\)"),
        (torch.zeros(2, 10), torch.tensor([1, 1]), "rows must be distinct"),
        (torch.zeros(2, 10), torch.tensor([0, 2]), "not configured"),
    ]
    for logits, rows, message in bad_calls:
        for method in (sampler.sample, sampler.probs):
            with pytest.raises(ValueError, match=message):
                method(logits, rows)
    assert (sampler.step == 0).all()  # refused calls record nothing
