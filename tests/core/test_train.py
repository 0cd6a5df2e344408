"""The shared trainer: bit-exact resume, learning, official optimizer groups, run-folder files."""
import dataclasses
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from eaglefinch.cli import main

from eaglefinch.rwkv_core import RWKV, RWKVConfig
from eaglefinch.rwkv_core.data import ShardWriter, TokenDataset
from eaglefinch.rwkv_core.checkpoint import read_torch_file
from eaglefinch.rwkv_core.run import read_metrics
from eaglefinch.rwkv_core.train import NextTokenTask, NonFiniteLoss, TrainConfig, lr_at, param_groups, train


def tiny_model(vocab=64, arch="finch"):
    torch.manual_seed(0)
    return RWKV(RWKVConfig(arch=arch, n_layer=2, n_embd=32, head_size=16, vocab_size=vocab,
                           mix_lora_dim=4, decay_lora_dim=8))


def write_dataset(folder, docs_by_split):
    for split, docs in docs_by_split.items():
        with ShardWriter(folder, split, shard_tokens=500) as w:
            for d in docs:
                w.add(d)
    return TokenDataset(folder, "train"), TokenDataset(folder, "val")


NEXT = torch.randperm(63, generator=torch.Generator().manual_seed(42)) + 1   # a fixed successor per token


def patterned_docs(n, seed, length=40):
    """Markov documents: 90% of the time the next token is NEXT[token], else uniform. The unigram
    entropy is ~log(63) = 4.1 nats; the true conditional entropy is ~0.8."""
    g = torch.Generator().manual_seed(seed)
    docs = []
    for _ in range(n):
        doc = [int(torch.randint(1, 64, (1,), generator=g))]
        for _ in range(length - 1):
            follow = torch.rand(1, generator=g).item() < 0.9
            doc.append(int(NEXT[doc[-1] - 1]) if follow else int(torch.randint(1, 64, (1,), generator=g)))
        docs.append(doc)
    return docs


def test_resume_gives_bit_identical_losses(tmp_path):
    train_data, val_data = write_dataset(tmp_path / "data", {"train": patterned_docs(40, 0), "val": patterned_docs(5, 1)})
    cfg = TrainConfig(max_steps=8, decay_steps=8, batch_size=4, ctx_len=16, log_every=1, val_every=4, save_every=4,
                      warmup_steps=2)
    train(NextTokenTask(tiny_model()), cfg, train_data, tmp_path / "a", val_data=val_data, progress=False)

    half = TrainConfig(**{**cfg.__dict__, "max_steps": 4})
    train(NextTokenTask(tiny_model()), half, train_data, tmp_path / "b", val_data=val_data, progress=False)
    # a fresh process would rebuild the model from scratch: use a differently initialised one
    torch.manual_seed(123)
    other = RWKV(tiny_model().cfg)
    train(NextTokenTask(other), cfg, train_data, tmp_path / "b", val_data=val_data, resume=True, progress=False)

    a, b = read_metrics(tmp_path / "a" / "metrics.jsonl"), read_metrics(tmp_path / "b" / "metrics.jsonl")
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        for key in ("loss", "val_loss", "lr"):
            if key in ra:
                assert ra[key] == rb[key], (ra, rb)  # bit-exact on the CPU
    for name in ("model.safetensors", "checkpoint.pt", "loss.png"):
        assert (tmp_path / "b" / name).exists()


def test_training_beats_the_unigram_entropy(tmp_path):
    """A model that uses the context predicts far better than token frequencies alone."""
    train_data, val_data = write_dataset(tmp_path / "data", {"train": patterned_docs(200, 0), "val": patterned_docs(20, 1)})
    val_tokens = torch.from_numpy(val_data.window(0, len(val_data)))
    counts = torch.bincount(val_tokens, minlength=64).double()
    p = counts[counts > 0] / counts.sum()
    unigram_entropy = -(p * p.log()).sum().item()          # nats/token, ~4 for these documents
    cfg = TrainConfig(max_steps=120, batch_size=8, ctx_len=32, lr_init=3e-3, lr_final=3e-4, val_every=120,
                      val_batches=4, save_every=1000, log_every=20)
    train(NextTokenTask(tiny_model()), cfg, train_data, tmp_path / "run", val_data=val_data, progress=False)
    val_loss = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "val_loss" in r][-1]["val_loss"]
    assert val_loss < 0.5 * unigram_entropy, (val_loss, unigram_entropy)


def test_official_parameter_groups_and_schedule():
    model = tiny_model()
    groups = param_groups(model, TrainConfig(weight_decay=0.1))
    names = {id(p): n for n, p in model.named_parameters()}
    by_group = [{names[id(p)].rsplit(".", 1)[-1] for p in g["params"]} for g in groups]
    assert by_group[0] == {"time_decay"} and groups[0]["lr_scale"] == 2.0
    assert "time_decay_w1" in by_group[1] and "time_maa_w1" in by_group[1] and "time_faaaa" in by_group[1]
    assert by_group[2] == {"weight"} and groups[2]["weight_decay"] == 0.1
    assert all(p.dim() >= 2 for p in groups[2]["params"])
    assert all(p.dim() < 2 or names[id(p)].split(".")[-1].startswith("time_") for p in groups[1]["params"])
    cfg = TrainConfig(max_steps=101, warmup_steps=10, lr_init=1.0, lr_final=0.1)
    assert lr_at(0, cfg) == 0.2 * 1.0
    assert math.isclose(lr_at(100, cfg), 0.1)
    assert math.isclose(lr_at(50, cfg), 0.55)


def test_state_tuning_trains_only_the_initial_state(tmp_path):
    train_data, val_data = write_dataset(tmp_path / "data", {"train": patterned_docs(20, 0), "val": patterned_docs(3, 1)})
    model = tiny_model()
    with torch.no_grad():  # stand-in for a pretrained model: the official init zeroes att.output
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = TrainConfig(max_steps=5, batch_size=2, ctx_len=16, train_mode="state", lr_init=0.1, save_every=100)
    train(NextTokenTask(model), cfg, train_data, tmp_path / "run", progress=False)
    after = model.state_dict()
    assert model.cfg.tuned_state
    for k, v in before.items():
        assert torch.equal(v, after[k]), k
    assert all(after[f"blocks.{i}.att.time_state"].abs().sum() > 0 for i in range(2))


class NaNAtStep(NextTokenTask):
    """A task whose loss turns NaN at its `bad_step`-th training forward (a diverging run)."""

    def __init__(self, model, bad_step):
        super().__init__(model)
        self.bad_step, self.calls = bad_step, 0

    def forward(self, batch):
        loss = super().forward(batch)
        self.calls += self.training
        return loss * float("nan") if self.training and self.calls == self.bad_step else loss


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    train_data, val_data = write_dataset(tmp_path / "data", {"train": patterned_docs(40, 0), "val": patterned_docs(5, 1)})
    cfg = TrainConfig(max_steps=8, decay_steps=8, batch_size=4, ctx_len=16, log_every=1, val_every=2, save_every=3,
                      warmup_steps=2)
    for steps in (3, 4, 8):   # the same run, uninterrupted, stopped after 3, 4 and 8 steps
        clean = NextTokenTask(tiny_model())
        train(clean, dataclasses.replace(cfg, max_steps=steps), train_data, tmp_path / f"clean{steps}",
              val_data=val_data, progress=False)
        if steps == 4:
            after_four = {k: v.clone() for k, v in clean.state_dict().items()}

    task = NaNAtStep(tiny_model(), bad_step=5)
    with pytest.raises(NonFiniteLoss) as failure:
        train(task, cfg, train_data, tmp_path / "run", val_data=val_data, progress=False)
    run = tmp_path / "run"
    assert (failure.value.step, failure.value.saved_step) == (5, 3) and math.isnan(failure.value.loss)
    message = str(failure.value)
    assert "step 5: the training loss is nan" in message and f"{run / 'checkpoint.pt'} at step 3" in message
    assert "--resume" in message and "lr_init" in message
    for k, v in task.state_dict().items():   # the bad step never reached the weights
        assert torch.equal(v, after_four[k]), k
    checkpoint = read_torch_file(run / "checkpoint.pt")
    reference = read_torch_file(tmp_path / "clean3" / "checkpoint.pt")
    assert checkpoint["step"] == 3
    for k, v in reference["task"].items():
        assert torch.equal(checkpoint["task"][k], v), k
    saved, reference = (load_file(folder / "model.safetensors") for folder in (run, tmp_path / "clean3"))
    assert saved.keys() == reference.keys() and all(torch.equal(saved[k], v) for k, v in reference.items())
    assert max(r["step"] for r in read_metrics(run / "metrics.jsonl")) == 3

    train(NextTokenTask(tiny_model()), cfg, train_data, run, val_data=val_data, resume=True, progress=False)
    resumed, clean = (read_metrics(folder / "metrics.jsonl") for folder in (run, tmp_path / "clean8"))
    timeless = [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in resumed]
    assert timeless == [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in clean]   # bit-exact on the CPU


def test_the_command_line_reports_a_non_finite_loss_in_one_line(tmp_path, capsys):
    write_dataset(tmp_path / "data", {"train": patterned_docs(40, 0), "val": patterned_docs(5, 1)})
    config = tmp_path / "diverging.json"   # an lr far too large: the first step's update makes the next loss NaN
    config.write_text(json.dumps({"model": {**tiny_model().cfg.to_dict()},
                                  "train": {"max_steps": 6, "batch_size": 2, "ctx_len": 16, "lr_init": 1e30,
                                            "lr_final": 1e30, "warmup_steps": 0, "save_every": 1}}))
    run = tmp_path / "run"
    assert main(["text", "train", "--config", str(config), "--data", str(tmp_path / "data"), "--out", str(run)]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1, errors
    assert errors[0].startswith("eaglefinch: error: step 2: the training loss is nan")
    assert f"{run / 'checkpoint.pt'} at step 1" in errors[0]
    assert read_torch_file(run / "checkpoint.pt")["step"] == 1



class MeanInputTask:
    """A stand-in task whose loss is its batch's mean input id: it tells windows apart."""
    def eval(self):
        pass

    def train(self):
        pass

    def __call__(self, batch):
        return batch.inputs.double().mean()


def test_validation_reads_only_this_processs_rows_of_each_global_batch(monkeypatch):
    """Under 2 processes each reads and scores its half of every global batch (batch_size x 2 windows),
    a smaller last batch whole, and the ranks' averaged losses are one process's."""
    import contextlib
    import types

    import numpy as np

    from eaglefinch.rwkv_core.data import TokenStream
    from eaglefinch.rwkv_core.train import evaluate

    stream = TokenStream([np.arange(1, 5 * 8 + 2)], "val")   # 5 windows of 8: a global batch of 4, then 1
    reads, batch_at = [], TokenStream.batch_at
    monkeypatch.setattr(TokenStream, "batch_at",
                        lambda self, starts, T: reads.append(list(starts)) or batch_at(self, starts, T))

    def rank_means(rank):
        """(the windows rank `rank` of 2 read, the losses it handed to proc.mean)"""
        reads.clear()
        shared = []
        proc = types.SimpleNamespace(rank=rank, world_size=2, device=torch.device("cpu"),
                                     autocast=contextlib.nullcontext(),
                                     mean=lambda loss: shared.append(float(loss)) or 0.0)
        evaluate(MeanInputTask(), stream, TrainConfig(batch_size=2, ctx_len=8, val_batches=10), proc)
        return list(reads), shared

    (reads0, shares0), (reads1, shares1) = rank_means(0), rank_means(1)
    assert reads0 == [[0, 8], [32]] and reads1 == [[16, 24], [32]]
    assert [(a + b) / 2 for a, b in zip(shares0, shares1)] == [float(MeanInputTask()(batch_at(stream, [0, 8, 16, 24], 8)))]
