"""The ablation's variants are what they claim to be (research/variants.py).

Each property is checked on the variant and, as the positive control, on the core Finch, where it
must fail: a test that a variant "ignores x_{t-1}" proves nothing unless Finch is seen not to.
Modules get random parameters (LoRAs included, which start at zero), as a trained model has.
"""
import pytest
import torch

from eaglefinch.research.variants import (VARIANTS, ChannelMixNoShift, TimeMixVariant, build_variant)
from eaglefinch.rwkv_core import RWKVConfig
from eaglefinch.rwkv_core.model import ChannelMixFinch, TimeMixFinch, token_shift

CFG = RWKVConfig(n_layer=2, n_embd=32, vocab_size=50, head_size=8, mix_lora_dim=4, decay_lora_dim=6)
B, T, t = 2, 7, 4   # t: the position whose dependence on t - 1 is checked


def randomised(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return module


def finch_and(shift, decay):
    """A random Finch time-mix of layer 1 and the variant made from its weights."""
    finch = randomised(TimeMixFinch(CFG, 1))
    variant = TimeMixVariant(CFG, 1, shift, decay)
    variant.load_state_dict(variant.from_finch(finch.state_dict()))
    return finch, variant


def inputs(seed=1):
    x = torch.randn(B, T, CFG.n_embd, generator=torch.Generator().manual_seed(seed)).requires_grad_()
    return x, token_shift(x, torch.zeros(B, CFG.n_embd))


def grad_from_position(outputs, x, position):
    """d(sum of every output at `position`, randomly weighted) / dx: [B, T, C] (zeros where unused)."""
    g = torch.Generator().manual_seed(2)
    total = sum((o[:, position] * torch.randn(o[:, position].shape, generator=g)).sum()
                for o in outputs if o.dim() >= 3)
    grad, = torch.autograd.grad(total, x, allow_unused=True)
    return torch.zeros_like(x) if grad is None else grad


def test_the_full_variant_is_finch():
    finch, variant = finch_and("ddlerp", "lora")
    x, prev = inputs()
    for a, b in zip(finch.mix(x, prev), variant.mix(x, prev)):
        torch.testing.assert_close(b, a, rtol=0, atol=0)


@pytest.mark.parametrize("shift, decay, zeroed", [
    ("static", "lora", ["time_maa_w1"]),                      # ddlerp LoRA of rank 0: the static lerp
    ("ddlerp", "static", ["time_decay_w1"]),                  # decay LoRA of rank 0: time_decay alone
    ("none", "lora", ["time_maa_w1", "time_maa_w", "time_maa_k", "time_maa_v", "time_maa_r", "time_maa_g"]),
])
def test_each_variant_is_finch_with_its_part_zeroed(shift, decay, zeroed):
    """An independent reference: Finch with the taken-out part's weights set to zero computes the
    same thing (static shift: no LoRA offset; static decay: tanh(0) = 0; no shift: x + 0 * delta)."""
    finch, variant = finch_and(shift, decay)
    with torch.no_grad():
        for name in zeroed:
            getattr(finch, name).zero_()
    x, prev = inputs()
    for a, b in zip(finch.mix(x, prev), variant.mix(x, prev)):
        torch.testing.assert_close(b.expand_as(a), a, rtol=1e-6, atol=1e-6)   # a static decay: [H, N]


@pytest.mark.parametrize("layer", ["time-mix", "channel-mix"])
def test_no_shift_never_reads_the_previous_token(layer):
    if layer == "time-mix":
        finch, variant = finch_and("none", "lora")
        run = lambda module, x, prev: module.mix(x, prev)              # r, k, v, g, w: the mixed inputs
    else:
        finch = randomised(ChannelMixFinch(CFG, 1))
        variant = ChannelMixNoShift(CFG, 1)
        variant.load_state_dict({k: v for k, v in finch.state_dict().items() if not k.startswith("time_")})
        run = lambda module, x, prev: module.mix(x, prev) + (module(x, prev[:, 0])[0],)
    for module, reads_previous in ((finch, True), (variant, False)):
        x, prev = inputs()
        grad = grad_from_position(run(module, x, prev), x, t)
        assert grad[:, t].abs().sum() > 0
        assert (grad[:, t - 1].abs().sum() > 0) == reads_previous
        assert grad[:, :t - 1].abs().sum() == 0 and grad[:, t + 1:].abs().sum() == 0   # nothing else either


def test_static_decay_does_not_depend_on_the_input():
    finch, variant = finch_and("ddlerp", "static")
    for module, data_dependent in ((finch, True), (variant, False)):
        x, prev = inputs()
        w_log = module.mix(x, prev)[4]
        grad, = torch.autograd.grad(w_log.sum(), x, allow_unused=True)
        assert (grad is not None and grad.abs().sum() > 0) == data_dependent
    assert w_log.shape == (CFG.n_head, CFG.head_size)          # one decay per channel, at every token
    torch.testing.assert_close(w_log, -torch.exp(variant.time_decay).view(CFG.n_head, CFG.head_size))


def test_static_shift_mixes_with_fixed_per_channel_weights():
    """Static: each target's input is x + (x_{t-1} - x) * time_maa_target for any input; Finch's
    ddlerp moves these weights with the data."""
    finch, variant = finch_and("static", "lora")
    for seed in (1, 2):
        x, prev = inputs(seed)
        mixed = variant.shifted(x, prev)
        for target, value in mixed.items():
            torch.testing.assert_close(value, x + (prev - x) * getattr(variant, f"time_maa_{target}"), rtol=0, atol=0)
        xw, xk, xv, xr, xg = finch.ddlerp(x, prev - x)
        assert not torch.allclose(xk, x + (prev - x) * finch.time_maa_k)
    assert not any("w1" in n or "w2" in n for n, _ in variant.named_parameters() if n.startswith("time_maa"))


def test_parameter_counts():
    """Each variant is Finch less exactly the parameters it takes out (per layer, C = width,
    D = ddlerp LoRA, Dd = decay LoRA, A = attention width)."""
    C, A, D, Dd, L = CFG.n_embd, CFG.dim_att, CFG.mix_lora_dim, CFG.decay_lora_dim, CFG.n_layer
    counts = {}
    for v in VARIANTS:
        torch.manual_seed(0)
        counts[v] = build_variant(v, CFG).num_params()
    ddlerp = C + C * 5 * D + 5 * D * C          # time_maa_x, time_maa_w1, time_maa_w2
    lerps = 5 * C                               # time_maa_w, k, v, r, g
    assert counts["finch"] - counts["static-shift"] == L * ddlerp
    assert counts["finch"] - counts["static-decay"] == L * (C * Dd + Dd * A + C + C * D + D * C)
    assert counts["finch"] - counts["no-shift"] == L * (ddlerp + lerps + 2 * C)   # + the channel-mix's two
    assert counts["eagle"] < counts["static-decay"]


def test_head_sizes_at_equal_width_have_equal_parameter_counts():
    models = {h: build_variant("finch", RWKVConfig(n_layer=2, n_embd=128, vocab_size=50, head_size=h))
              for h in (32, 64, 128)}
    assert [m.cfg.n_head for m in models.values()] == [4, 2, 1]
    assert len({m.num_params() for m in models.values()}) == 1


def test_variants_start_from_finchs_weights():
    models = {}
    for v in VARIANTS[:4]:
        torch.manual_seed(3)
        models[v] = build_variant(v, CFG)
    finch = models.pop("finch").state_dict()
    for v, model in models.items():
        sd = model.state_dict()
        shared = [k for k in sd if k in finch and sd[k].shape == finch[k].shape]
        assert len(shared) > len(sd) // 2
        for k in shared:
            assert torch.equal(sd[k], finch[k]), (v, k)
    with pytest.raises(ValueError, match="unknown variant"):
        build_variant("no-decay", CFG)
