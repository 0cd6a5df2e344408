"""Model-level properties: one pass == chunks with the state carried == token by token; state API."""
import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from .official_ckpt import random_official_state_dict
from eaglefinch.rwkv_core import RWKV, RWKVConfig, RWKVState, list_presets
from eaglefinch.rwkv_core.checkpoint import infer_config
from eaglefinch.rwkv_core.model import gather_positions, reversal_index


def random_model(arch, dtype=torch.float32, seed=0, tuned=False):
    sd = random_official_state_dict(arch, n_layer=2, n_embd=64, vocab_size=300, head_size=16,
                                    mix_lora=8, decay_lora=16, decay="typical", tuned_state=tuned, seed=seed)
    model = RWKV(infer_config(sd))
    model.load_state_dict(sd)
    return model.to(dtype).eval()


def run_three_ways(model, idx, split):
    with torch.no_grad():
        whole, s_whole = model(idx)
        a, s = model(idx[:, :split])
        b, s_chunks = model(idx[:, split:], s)
        chunks = torch.cat([a, b], dim=1)
        steps, s_steps = [], None
        for t in range(idx.shape[1]):
            logits, s_steps = model(idx[:, t:t + 1], s_steps)
            steps.append(logits)
    return (whole, s_whole), (chunks, s_chunks), (torch.cat(steps, 1), s_steps)


def rel(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


@pytest.mark.parametrize("arch", ["eagle", "finch"])
@pytest.mark.parametrize("split", [1, 13])
def test_whole_chunked_and_stepwise_agree_fp32(arch, split):
    model = random_model(arch, tuned=(split == 13))
    idx = torch.randint(0, 300, (3, 40), generator=torch.Generator().manual_seed(1))
    (whole, s0), (chunks, s1), (steps, s2) = run_three_ways(model, idx, split)
    for logits, state in ((chunks, s1), (steps, s2)):
        assert rel(logits, whole) <= 1e-5
        assert rel(state.wkv, s0.wkv) <= 1e-5
        assert rel(state.att_shift, s0.att_shift) <= 1e-5


@pytest.mark.parametrize("arch", ["eagle", "finch"])
def test_whole_chunked_and_stepwise_agree_bf16(arch):
    """bf16 keeps 8 significant bits (a relative step of 2^-8 = 0.4%). The WKV and its state run in
    fp32 in every path, so the three paths round the same bf16 activations and agree to about one
    bf16 step: we allow 1% of the largest logit (measured: 0). Against the fp32 model, the
    rounding of weights and activations through 2 layers adds up to a few steps (measured 1.3% and
    1.9%): we allow 3%."""
    model = random_model(arch, torch.bfloat16)
    idx = torch.randint(0, 300, (2, 40), generator=torch.Generator().manual_seed(2))
    (whole, _), (chunks, _), (steps, _) = run_three_ways(model, idx, 17)
    assert rel(chunks, whole) <= 1e-2
    assert rel(steps, whole) <= 1e-2
    with torch.no_grad():
        ref, _ = random_model(arch)(idx)
    assert rel(whole, ref) <= 3e-2


def test_embeds_and_hidden_match_ids_and_logits():
    model = random_model("finch")
    idx = torch.randint(0, 300, (2, 9))
    with torch.no_grad():
        logits, _ = model(idx)
        hidden, _ = model.forward_hidden(embeds=model.emb(idx))
        assert torch.allclose(model.head(hidden), logits, atol=1e-6)
    with pytest.raises(ValueError, match="exactly one"):
        model(idx, embeds=model.emb(idx))


def test_state_is_never_mutated_and_api():
    model = random_model("finch")
    idx = torch.randint(0, 300, (4, 6), generator=torch.Generator().manual_seed(0))   # not the test order's
    with torch.no_grad():
        _, state = model(idx)
        before = state.clone()
        _, state2 = model(idx[:, :1], state)
    for f in ("att_shift", "wkv", "ffn_shift"):
        assert torch.equal(getattr(state, f), getattr(before, f))
        assert not torch.equal(getattr(state2, f), getattr(state, f))
    assert state.wkv.dtype == torch.float32 and state.wkv.shape == (2, 4, 4, 16, 16)
    # per-sequence selection and concatenation: running sequences separately == together
    with torch.no_grad():
        together, _ = model(idx[:, :1], state)
        alone, _ = model(idx[2:3, :1], state[2])
    # fp32, batch of 4 against 1: the matrix kernels block differently (seen up to 2e-6 on logits of size ~4)
    assert torch.allclose(alone[0], together[2], rtol=1e-5, atol=1e-6)
    re = RWKVState.cat([state[i] for i in range(4)])
    assert torch.equal(re.wkv, state.wkv) and re.batch_size == 4
    assert state[torch.tensor([3, 1])].batch_size == 2


def test_state_save_load_round_trip(tmp_path):
    model = random_model("eagle")
    with torch.no_grad():
        _, state = model(torch.randint(0, 300, (2, 5)))
    state.save(tmp_path / "s.safetensors")
    loaded = RWKVState.load(tmp_path / "s.safetensors")
    assert all(torch.equal(getattr(loaded, f), getattr(state, f)) for f in ("att_shift", "wkv", "ffn_shift"))
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a saved RWKV state"):
        RWKVState.load(tmp_path / "bad.safetensors")


def test_tuned_state_is_the_initial_state():
    model = random_model("finch", tuned=True)
    s = model.initial_state(2)
    for i, block in enumerate(model.blocks):  # official layout [head, value, key] -> ours [key, value]
        assert torch.equal(s.wkv[i, 1], block.att.time_state.transpose(1, 2))


PUBLISHED = {"eagle-0.4b": 0.46, "eagle-1.5b": 1.58, "eagle-3b": 3.06, "eagle-7b": 7.52,
             "finch-1.6b": 1.60, "finch-3b": 3.10}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_presets_match_published_parameter_counts(name):
    with torch.device("meta"):
        n = RWKV(RWKVConfig.load(name)).num_params()
    assert round(n / 1e9, 2) == PUBLISHED[name]


def test_every_preset_builds_and_runs_at_tiny_width():
    presets = list_presets()
    assert set(PUBLISHED) | {"finch-tiny", "eagle-tiny", "finch-7b", "finch-14b"} <= set(presets), presets
    for name in presets:
        cfg = RWKVConfig.load(name).to_dict()
        cfg.update(n_layer=2, n_embd=64, head_size=16, vocab_size=50, dim_att=None, dim_ffn=None)
        model = RWKV(RWKVConfig.from_dict(cfg))
        logits, _ = model(torch.randint(0, 50, (1, 3)))
        assert logits.shape == (1, 3, 50) and torch.isfinite(logits).all()


def test_config_rejects_bad_values(tmp_path):
    with pytest.raises(ValueError, match="arch"):
        RWKVConfig(arch="raven")
    with pytest.raises(ValueError, match="multiple of head_size"):
        RWKVConfig(n_embd=100)
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"arch": "finch", "n_layr": 2}))
    with pytest.raises(ValueError, match="unknown model config keys"):
        RWKVConfig.load(p)


def test_reverse_span_equals_its_definition():
    """Odd blocks read the span backwards: run the blocks by hand with the flips and compare."""
    model = random_model("finch")
    model = RWKV(RWKVConfig(**{**model.cfg.to_dict(), "n_layer": 3}))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    idx = torch.randint(0, 300, (2, 12))
    span = (3, 9)
    with torch.no_grad():
        ours, _ = model(idx, reverse_span=span)
        x = model.blocks[0].ln0(model.emb(idx))
        s = model.initial_state(2)
        for i, block in enumerate(model.blocks):
            if i % 2:
                x = torch.cat([x[:, :3], x[:, 3:9].flip(1), x[:, 9:]], 1)
            x = block(x, s.att_shift[i], s.wkv[i], s.ffn_shift[i])[0]
            if i % 2:
                x = torch.cat([x[:, :3], x[:, 3:9].flip(1), x[:, 9:]], 1)
        ref = model.head(model.ln_out(x))
        plain, _ = model(idx)
    assert torch.allclose(ours, ref, atol=1e-6)
    assert not torch.allclose(ours, plain, atol=1e-3)
    assert torch.allclose(ours[:, :3], plain[:, :3], atol=1e-6)  # positions before the span see no change


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_per_sample_reverse_span_reverses_only_each_span_and_is_its_own_inverse(data):
    B, T = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 9))
    spans = []
    for _ in range(B):
        start = data.draw(st.integers(0, T))
        spans.append((start, data.draw(st.integers(start, T))))
    x = torch.randn(B, T, 3)
    index = reversal_index(spans, B, T)
    y = gather_positions(x, index)
    for b, (start, end) in enumerate(spans):
        order = list(range(start)) + list(range(end - 1, start - 1, -1)) + list(range(end, T))
        assert torch.equal(y[b], x[b, order])
    assert torch.equal(gather_positions(y, index), x)  # one index flips and flips back


def test_the_model_is_initialised_once(monkeypatch):
    """PyTorch's default init of every nn.Linear and nn.Embedding would be overwritten by the official
    one (init_weights): it is skipped. Memory left uninitialised would show: deterministic mode
    fills it with NaN."""
    def not_wanted(tensor, *args, **kwargs):
        assert tensor.is_meta, "a default initialisation ran"  # on the meta device it costs nothing
    monkeypatch.setattr(torch.nn.init, "kaiming_uniform_", not_wanted)
    monkeypatch.setattr(torch.nn.init, "normal_", not_wanted)
    monkeypatch.setattr(torch.utils.deterministic, "fill_uninitialized_memory", True)
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        for arch in ("eagle", "finch"):
            torch.manual_seed(0)
            model = RWKV(RWKVConfig(arch=arch, n_layer=2, n_embd=64, head_size=16, vocab_size=300))
            assert all(torch.isfinite(p).all() for p in model.parameters())
            torch.manual_seed(0)
            again = RWKV(RWKVConfig(arch=arch, n_layer=2, n_embd=64, head_size=16, vocab_size=300))
            assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters()))
    finally:
        torch.use_deterministic_algorithms(deterministic)


def test_building_shows_progress_when_asked(capsys, monkeypatch):
    monkeypatch.setattr("eaglefinch.rwkv_core.model.PROGRESS_DELAY_S", 0)
    RWKV(RWKVConfig(n_layer=3, n_embd=64, head_size=16, vocab_size=300), progress=True)
    assert "initialising" in capsys.readouterr().err
    RWKV(RWKVConfig(n_layer=3, n_embd=64, head_size=16, vocab_size=300))
    assert capsys.readouterr().err == ""
