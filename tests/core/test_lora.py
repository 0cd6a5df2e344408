"""LoRA and PiSSA adapters (rwkv_core/lora.py): nothing changes at the start; training moves only the
adapters (and the per-channel parameters when asked); a run folder opens as base plus adapters,
unmerged; unmerged equals merged (greedy tokens, logits), and the official `rwkv` package computes
our unmerged model's logits from the merged .pth; the engine runs adapters; bad files are refused."""
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from eaglefinch.cli import main
from eaglefinch.rwkv_core import CheckpointError, RWKV, RWKVConfig, TrainConfig, load_model, save_model
from eaglefinch.rwkv_core.config import LORA_TARGETS
from eaglefinch.rwkv_core.engine import Engine
from eaglefinch.rwkv_core.generate import Generation
from eaglefinch.rwkv_core.lora import (LoRALinear, add_adapters, adapted_modules, has_adapters, is_small,
                                       load_adapters, merge_adapters, save_adapters)
from eaglefinch.rwkv_core.run import Run, read_metrics
from eaglefinch.rwkv_core.sampling import SamplerConfig
from eaglefinch.rwkv_core.train import NextTokenTask, read_resume_state, train

from .official_ckpt import random_official_state_dict
from .test_against_rwkv_package import compare_with_package
from .test_engine import reference_greedy
from .test_model import random_model
from .test_train import patterned_docs, write_dataset


def perturbed_adapters(model, seed=0, scale=0.2):
    """Give every adapter random factors, so that the update is far from zero (trained-like)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in adapted_modules(model).values():
            module.lora_A.add_(torch.randn(module.lora_A.shape, generator=g) * scale)
            module.lora_B.add_(torch.randn(module.lora_B.shape, generator=g) * scale)


def logits_of(model, seed=0, T=20):
    idx = torch.randint(0, model.cfg.vocab_size, (2, T), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(idx)[0]


@pytest.fixture
def base_pth(tmp_path):
    """An official-layout .pth of a random Finch (vocabulary 1000) and the model loaded from it."""
    path = tmp_path / "base.pth"
    torch.save(random_official_state_dict("finch", 2, 128, 1000, decay="fast"), path)
    return path


@pytest.mark.parametrize("init", ["lora", "pissa"])
@pytest.mark.parametrize("arch", ["eagle", "finch"])
def test_adapters_change_nothing_at_init(arch, init):
    model = random_model(arch, seed=4)
    before = logits_of(model)
    add_adapters(model, LORA_TARGETS, rank=4, alpha=8, init=init)
    assert len(adapted_modules(model)) == 2 * len(LORA_TARGETS)
    assert torch.equal(logits_of(model), before)
    # and the base keeps its official keys and values
    assert {k for k in model.state_dict() if "lora_" not in k} == set(random_model(arch, seed=4).state_dict())


def test_pissa_starts_from_the_top_singular_directions():
    model = random_model("finch", seed=5)
    W = model.blocks[1].att.value.weight.detach().double().clone()
    add_adapters(model, ["att.value"], rank=3, alpha=6, init="pissa")
    module = model.blocks[1].att.value
    U, S, Vh = torch.linalg.svd(W)
    top = U[:, :3] @ torch.diag(S[:3]) @ Vh[:3]                      # the best rank-3 approximation of W
    assert torch.allclose(module.scale * module.lora_B.double() @ module.lora_A.double(), top, atol=1e-5)
    assert torch.equal(module.weight.double(), W)                     # the base is not rewritten


@pytest.mark.parametrize("init", ["lora", "pissa"])
def test_unmerged_adapters_compute_the_merged_weights(init):
    """The slow obvious twin: one projection, x (W + scale * (B A - B0 A0))^T in fp64."""
    model = random_model("finch", seed=6)
    add_adapters(model, ["ffn.key"], rank=4, alpha=4, init=init)
    perturbed_adapters(model)
    m = model.blocks[0].ffn.key
    x = torch.randn(3, 5, m.in_features)
    W = m.weight.double() + m.scale * m.lora_B.double() @ m.lora_A.double()
    if init == "pissa":
        W = W - m.scale * m.lora_B0.double() @ m.lora_A0.double()
    assert torch.allclose(m(x).double(), x.double() @ W.T, atol=1e-5)


@pytest.mark.parametrize("init", ["lora", "pissa"])
def test_adapters_file_round_trip_onto_the_original_base(tmp_path, base_pth, init):
    """Saved adapters (PiSSA's as a rank-2r update) on a freshly loaded base give the trained model's logits."""
    model = load_model(base_pth)
    add_adapters(model, ["att.key", "att.output", "ffn.value"], rank=4, alpha=8, init=init)
    perturbed_adapters(model)
    save_adapters(model, tmp_path / "adapters.safetensors")
    saved = load_file(tmp_path / "adapters.safetensors")
    rank = 8 if init == "pissa" else 4
    assert saved["blocks.1.att.key.lora_A"].shape == (rank, 128) and len(saved) == 2 * 3 * 2
    fresh = load_model(base_pth)
    load_adapters(fresh, tmp_path / "adapters.safetensors")
    assert torch.allclose(logits_of(fresh), logits_of(model), rtol=1e-4, atol=1e-4)
    assert torch.equal(fresh.blocks[0].att.key.weight, load_model(base_pth).blocks[0].att.key.weight)


def train_lora(folder, data, model, max_steps=4, resume=False, **lora):
    cfg = TrainConfig(max_steps=max_steps, decay_steps=8, batch_size=2, ctx_len=16, lr_init=0.05, warmup_steps=1,
                      save_every=4, log_every=1, train_mode="lora", lora_rank=2, lora_alpha=4, **lora)
    train(NextTokenTask(model), cfg, data, folder, progress=False, resume=resume)
    return model


@pytest.mark.parametrize("init,small", [("lora", False), ("pissa", True)])
def test_lora_training_moves_only_the_adapters(tmp_path, init, small):
    train_data, _ = write_dataset(tmp_path / "data", {"train": patterned_docs(20, 0), "val": patterned_docs(3, 1)})
    model = random_model("finch", seed=7)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    train_lora(tmp_path / "run", train_data, model, lora_init=init, lora_train_small=small,
               lora_targets=["att.key", "att.gate", "ffn.value"])
    after = model.state_dict()
    for key, value in base.items():
        assert torch.equal(after[key], value) != (small and is_small(key)), key
    assert all(after[f"{name}.lora_B"].abs().sum() > 0 for name in adapted_modules(model))
    assert {name.split(".", 2)[2] for name in adapted_modules(model)} == {"att.key", "att.gate", "ffn.value"}
    # the optimizer held only what trains
    trained = [p for p in model.parameters() if p.requires_grad]
    assert len(read_resume_state(tmp_path / "run" / "checkpoint.pt")["optimizer"]["state"]) == len(trained)
    assert len(trained) == 2 * 2 * 3 + (sum(is_small(k) for k in base) if small else 0)
    # the run folder: the base in model.safetensors (bitwise, but for per-channel parameters that
    # train: the adapters file holds those), the adapters beside it; it opens unmerged
    saved_base = load_model(tmp_path / "run" / "model.safetensors").state_dict()
    assert all(torch.equal(v, base[k]) for k, v in saved_base.items() if not (small and is_small(k)))
    assert set(load_file(tmp_path / "run" / "adapters.safetensors")) == \
        {f"{name}.lora_{m}" for name in adapted_modules(model) for m in "AB"} | ({k for k in base if is_small(k)} if small else set())
    reopened = Run.open(tmp_path / "run").load_model()
    assert has_adapters(reopened)
    assert torch.allclose(logits_of(reopened), logits_of(model.eval()), rtol=1e-4, atol=1e-4)


def test_lora_resume_is_bit_identical(tmp_path):
    train_data, _ = write_dataset(tmp_path / "data", {"train": patterned_docs(20, 0), "val": patterned_docs(3, 1)})
    train_lora(tmp_path / "a", train_data, random_model("finch", seed=8), max_steps=8, lora_init="pissa")
    train_lora(tmp_path / "b", train_data, random_model("finch", seed=8), max_steps=4, lora_init="pissa")
    # a new process opens the run (base plus its adapters) and goes on
    train_lora(tmp_path / "b", train_data, Run.open(tmp_path / "b").load_model(), max_steps=8, resume=True,
               lora_init="pissa")
    a, b = read_metrics(tmp_path / "a" / "metrics.jsonl"), read_metrics(tmp_path / "b" / "metrics.jsonl")
    assert [(r["step"], r["loss"], r["lr"]) for r in a] == [(r["step"], r["loss"], r["lr"]) for r in b]
    a, b = load_file(tmp_path / "a" / "adapters.safetensors"), load_file(tmp_path / "b" / "adapters.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def greedy(model, prompts, steps=12):
    gen = Generation(model, prompts, steps, SamplerConfig(temperature=0), seed=0)
    for _ in gen:
        pass
    return gen.tokens


@pytest.mark.parametrize("init", ["lora", "pissa"])
def test_merged_pth_equals_unmerged_and_the_rwkv_package_agrees(tmp_path, base_pth, init):
    model = load_model(base_pth)
    add_adapters(model, LORA_TARGETS, rank=4, alpha=8, init=init)
    perturbed_adapters(model, scale=0.3)
    save_adapters(model, tmp_path / "adapters.safetensors")
    assert main(["merge", "--checkpoint", str(base_pth), "--adapters", str(tmp_path / "adapters.safetensors"),
                 "--out", str(tmp_path / "merged.pth")]) == 0
    merged = load_model(tmp_path / "merged.pth").eval()
    assert not has_adapters(merged) and set(merged.state_dict()) == set(load_model(base_pth).state_dict())
    unmerged = load_model(base_pth)
    load_adapters(unmerged, tmp_path / "adapters.safetensors")
    unmerged.eval()
    prompts = [[1, 2, 3, 4, 5], [999], [17, 400, 3]]
    assert greedy(unmerged, prompts) == greedy(merged, prompts)
    assert torch.allclose(logits_of(unmerged), logits_of(merged), rtol=1e-4, atol=1e-4)
    compare_with_package(tmp_path / "merged.pth", unmerged, 1000)


def test_merge_keeps_the_base_dtype_and_refuses_a_model_without_adapters(tmp_path, capsys):
    model = random_model("eagle", seed=9)
    save_model(model, tmp_path / "base.safetensors", dtype=torch.bfloat16)
    add_adapters(model, ["att.value"], rank=2, alpha=2)
    perturbed_adapters(model)
    save_adapters(model, tmp_path / "adapters.safetensors")
    assert main(["merge", "--checkpoint", str(tmp_path / "base.safetensors"), "--adapters",
                 str(tmp_path / "adapters.safetensors"), "--out", str(tmp_path / "m.safetensors")]) == 0
    merged = load_file(tmp_path / "m.safetensors")
    assert merged["blocks.0.att.value.weight"].dtype == torch.bfloat16
    expected = model.blocks[0].att.value.weight.float() + model.blocks[0].att.value.delta_weight()
    assert torch.allclose(merged["blocks.0.att.value.weight"].float(), expected, rtol=1e-2, atol=1e-2)
    assert main(["merge", "--checkpoint", str(tmp_path / "base.safetensors"), "--out", str(tmp_path / "x.pth")]) == 1
    assert "no adapters to merge" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        main(["merge", "--checkpoint", str(tmp_path / "base.safetensors"), "--out", str(tmp_path / "x.bin")])
    assert stop.value.code == 2
    with pytest.raises(SystemExit) as stop:
        main(["merge", "--help"])
    assert stop.value.code == 0 and "--adapters" in capsys.readouterr().out


@pytest.mark.parametrize("init", ["lora", "pissa"])
def test_engine_runs_unmerged_adapters_like_the_model(init):
    """Packed and split prefill, then batched decode, against the model token by token."""
    model = random_model("finch", seed=10)
    add_adapters(model, LORA_TARGETS, rank=4, alpha=8, init=init)
    perturbed_adapters(model, scale=0.3)
    prompts, steps = [[5, 6, 7, 8, 9, 10, 11], [3], [200, 100, 50]], 10
    engine = Engine(model, max_batch=3, prefill_tokens=4)
    slots = engine.allocate(3)
    logits = engine.prefill(slots, prompts)
    got = []
    for _ in range(steps):
        got.append(logits)
        logits = engine.decode(slots, logits.argmax(-1))
    for i, prompt in enumerate(prompts):
        tokens, expected = reference_greedy(model, prompt, steps)
        assert [int(step[i].argmax()) for step in got] == tokens
        assert torch.allclose(torch.stack([step[i] for step in got]), expected, rtol=1e-4, atol=1e-4)


def test_bad_adapters_files_are_refused_with_one_clear_error(tmp_path, base_pth):
    model = load_model(base_pth)
    add_adapters(model, ["att.key"], rank=2, alpha=2)
    good = tmp_path / "adapters.safetensors"
    save_adapters(model, good)

    def refused(path, match, target=None):
        target = target or load_model(base_pth)
        with pytest.raises(CheckpointError, match=match):
            load_adapters(target, path)
        assert not has_adapters(target)

    save_model(load_model(base_pth), tmp_path / "model.safetensors")
    refused(tmp_path / "model.safetensors", "not an adapters file")
    refused(base_pth, "an adapters file is a .safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file at all")
    refused(tmp_path / "junk.safetensors", "not a readable safetensors file")
    # adapters of another model shape
    other = RWKV(RWKVConfig(n_layer=2, n_embd=64, head_size=16, vocab_size=1000, mix_lora_dim=4, decay_lora_dim=8))
    add_adapters(other, ["att.key"], rank=2, alpha=2)
    save_adapters(other, tmp_path / "other.safetensors")
    refused(tmp_path / "other.safetensors", "another model shape: n_embd 64")
    # the same shape, other weights: another base
    torch.save(random_official_state_dict("finch", 2, 128, 1000, decay="fast", seed=1), tmp_path / "base2.pth")
    refused(good, "trained on another base model", target=load_model(tmp_path / "base2.pth"))
    # tampered tensors under the right metadata
    with safe_open(str(good), "pt") as f:
        tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    for name, change, match in [("wrong_shape", {"blocks.0.att.key.lora_A": torch.zeros(2, 64)}, "lora_A \\[2, 64\\]"),
                                ("extra_key", {"blocks.0.att.key.weight": torch.zeros(128, 128)}, "unexpected key"),
                                ("small_shape", {"blocks.0.att.time_faaaa": torch.zeros(3)}, "time_faaaa' has shape")]:
        save_file({**tensors, **change}, str(tmp_path / f"{name}.safetensors"), metadata=meta)
        refused(tmp_path / f"{name}.safetensors", match)
    half = {k: v for k, v in tensors.items() if not k.endswith("blocks.1.att.key.lora_B")}
    save_file(half, str(tmp_path / "half.safetensors"), metadata=meta)
    refused(tmp_path / "half.safetensors", "blocks.1.att.key.lora_B is missing")
    # and on the command line: one line, exit status 1
    assert main(["text", "generate", "--checkpoint", str(base_pth), "--adapters", str(tmp_path / "model.safetensors"),
                 "--prompt", "x", "--max-tokens", "1"]) == 1


def test_train_config_checks_the_lora_settings():
    for bad, match in [({"lora_rank": 0}, "lora_rank and lora_alpha must be positive"),
                       ({"lora_alpha": -1.0}, "must be positive"),
                       ({"lora_targets": ["att.key", "att.query"]}, "lora_targets must be distinct names"),
                       ({"lora_targets": []}, "lora_targets"),
                       ({"lora_targets": ["att.key", "att.key"]}, "distinct"),
                       ({"lora_init": "svd"}, "lora_init must be one of lora, pissa"),
                       ({"train_mode": "qlora"}, "train_mode must be one of full, state, lora")]:
        with pytest.raises(ValueError, match=match):
            TrainConfig(**bad)
    with pytest.raises(ValueError, match="larger than"):
        add_adapters(random_model("finch"), ["att.key"], rank=65, init="pissa")


def test_served_model_loads_adapters_unmerged(tmp_path, base_pth):
    from eaglefinch.serve.cli import load_served
    model = load_model(base_pth)
    add_adapters(model, ["ffn.key"], rank=2, alpha=2)
    perturbed_adapters(model)
    save_adapters(model, tmp_path / "adapters.safetensors")
    served, _, _, _ = load_served(str(base_pth), None, torch.float32, "cpu", str(tmp_path / "adapters.safetensors"))
    assert isinstance(served.blocks[1].ffn.key, LoRALinear)
    assert torch.allclose(logits_of(served), logits_of(model), rtol=1e-4, atol=1e-4)
    merge_adapters(served)
    assert not has_adapters(served) and torch.allclose(logits_of(served), logits_of(model), rtol=1e-4, atol=1e-4)
