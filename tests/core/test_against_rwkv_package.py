"""Our logits and states against the official `rwkv` package (0.8.32, 'cpu fp32', TorchScript on)."""
import pytest
import rwkv.model as rwkv_model  # the test extra: its absence fails the suite, never skips it
import torch

from eaglefinch.rwkv_core import RWKV, RWKVConfig, load_model, save_model, save_tuned_state

from .official_ckpt import random_official_state_dict

CASES = [  # arch, layers, width, vocab, head size, LoRA dims, decay, tuned state
    ("eagle", 2, 128, 65536, 64, None, "slow", False),
    ("eagle", 3, 192, 1000, 64, None, "fast", False),
    ("finch", 2, 128, 65536, 64, (32, 64), "slow", False),
    ("finch", 2, 256, 777, 64, (64, 128), "fast", False),
    ("finch", 3, 128, 1000, 64, (32, 64), "fast", True),
]
PROMPT_LEN, CONTINUATION = 64, 6


def rel_err(ours, ref):
    return ((ours - ref).abs().max() / ref.abs().max()).item()


def compare_with_package(path, model, vocab_size, seed=0):
    """Every position of a 64-token prompt, then token-by-token continuation with the state carried."""
    ref = rwkv_model.RWKV(model=str(path), strategy="cpu fp32", verbose=False)
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab_size, (PROMPT_LEN + CONTINUATION,), generator=g).tolist()
    ref_logits, ref_state = ref.forward(tokens[:PROMPT_LEN], None, full_output=True)
    with torch.no_grad():
        logits, state = model(torch.tensor([tokens[:PROMPT_LEN]]))
    assert rel_err(logits[0], ref_logits) <= 1e-4
    for layer in range(model.cfg.n_layer):  # pip state: [att shift, wkv [H, key, value], ffn shift] per layer
        assert rel_err(state.wkv[layer, 0], ref_state[3 * layer + 1]) <= 1e-4
    for t in tokens[PROMPT_LEN:]:
        ref_logits, ref_state = ref.forward([t], ref_state)
        with torch.no_grad():
            logits, state = model(torch.tensor([[t]]), state)
        assert rel_err(logits[0, 0], ref_logits) <= 1e-4


@pytest.mark.parametrize("arch,n_layer,n_embd,vocab,head_size,lora,decay,tuned", CASES,
                         ids=[f"{c[0]}-L{c[1]}-C{c[2]}-V{c[3]}-{c[6]}{'-state' if c[7] else ''}" for c in CASES])
def test_official_checkpoint_matches_package(tmp_path, arch, n_layer, n_embd, vocab, head_size, lora, decay, tuned):
    mix_lora, decay_lora = lora or (32, 64)
    sd = random_official_state_dict(arch, n_layer, n_embd, vocab, head_size, mix_lora, decay_lora, decay, tuned)
    path = tmp_path / "model.pth"
    torch.save(sd, path)
    model = load_model(path)
    cfg = model.cfg
    assert (cfg.arch, cfg.n_layer, cfg.n_embd, cfg.vocab_size, cfg.n_head, cfg.tuned_state) == \
        (arch, n_layer, n_embd, vocab, n_embd // head_size, tuned)
    if arch == "finch":
        assert (cfg.mix_lora_dim, cfg.decay_lora_dim) == (mix_lora, decay_lora)
    compare_with_package(path, model, vocab)


@pytest.mark.parametrize("arch", ["eagle", "finch"])
def test_package_loads_what_we_save(tmp_path, arch):
    torch.manual_seed(0)
    model = RWKV(RWKVConfig(arch=arch, n_layer=2, n_embd=128, vocab_size=500))
    with torch.no_grad():  # the official init zeroes several matrices: perturb everything
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    path = tmp_path / "ours.pth"
    save_model(model, path)
    compare_with_package(path, model, 500, seed=1)
    reloaded = load_model(path)
    for (k, a), (_, b) in zip(model.state_dict().items(), reloaded.state_dict().items()):
        assert torch.equal(a, b), k


def test_state_tuned_file_loads_in_the_package(tmp_path):
    """A tuned state saved by us as official time_state keys, merged into the base file the way
    ChatRWKV's state merger does, gives the package the same logits as our model with that state."""
    sd = random_official_state_dict("finch", 2, 128, 1000, decay="fast")
    torch.save(sd, tmp_path / "base.pth")
    model = load_model(tmp_path / "base.pth")
    model.add_tuned_state()
    with torch.no_grad():
        for block in model.blocks:
            block.att.time_state.normal_(0, 0.3)
    save_tuned_state(model, tmp_path / "state.pth")
    merged = {**sd, **torch.load(tmp_path / "state.pth", weights_only=True)}
    torch.save(merged, tmp_path / "merged.pth")
    reloaded = load_model(tmp_path / "base.pth", state=tmp_path / "state.pth")
    compare_with_package(tmp_path / "merged.pth", reloaded, 1000)
