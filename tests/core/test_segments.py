"""Training in segments (`segment_len`): the state carried and its gradient flowing back through every
segment gives the loss and the gradients of one pass over the whole sequence."""
import dataclasses
import json

import pytest
import torch

from eaglefinch.rwkv_core import RWKV, RWKVConfig
from eaglefinch.rwkv_core.data import Batch
from eaglefinch.rwkv_core.run import read_metrics
from eaglefinch.rwkv_core.train import NextTokenTask, TrainConfig, prepare_for_mode, train
from tests.core.test_train import patterned_docs, write_dataset

T, VOCAB = 4096, 64


def perturbed_model(arch, tuned_state=False):
    """A tiny model off the official init (which zeroes the outputs of every block), so that every
    parameter, the initial state included, gets a gradient that depends on the whole sequence."""
    torch.manual_seed(0)
    model = RWKV(RWKVConfig(arch=arch, n_layer=2, n_embd=32, head_size=16, vocab_size=VOCAB, mix_lora_dim=4,
                            decay_lora_dim=8, tuned_state=tuned_state))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def random_batch(batch_size=1, length=T):
    tokens = torch.randint(VOCAB, (batch_size, length + 1), generator=torch.Generator().manual_seed(1))
    return Batch(tokens[:, :-1], tokens[:, 1:])


def one_pass_gradients(task, batch):
    """(loss, {name: grad}) of the plain step: one forward over the whole sequence, one backward."""
    task.zero_grad(set_to_none=True)
    loss = task(batch)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in task.named_parameters() if p.requires_grad}


def segment_gradients(task, batch, segment_len):
    task.zero_grad(set_to_none=True)
    loss = task.backward_segments(batch, segment_len)
    return loss, {n: p.grad.clone() for n, p in task.named_parameters() if p.requires_grad}


def assert_same_step(task, batch, segment_len):
    loss, grads = one_pass_gradients(task, batch)
    seg_loss, seg_grads = segment_gradients(task, batch, segment_len)
    torch.testing.assert_close(seg_loss, loss, rtol=1e-6, atol=0)
    assert seg_grads.keys() == grads.keys() and grads
    for name, grad in grads.items():
        assert grad.abs().max() > 0, name   # every gradient is a real one, not a zero both sides agree on
        # fp32 sums in another order: agreement to a few ulps of each tensor's largest entry
        torch.testing.assert_close(seg_grads[name], grad, rtol=1e-5, atol=1e-5 * grad.abs().max().item(), msg=name)


@pytest.mark.parametrize("arch", ["finch", "eagle"])
@pytest.mark.parametrize("tuned_state", [False, True])
def test_eight_segments_of_512_give_the_loss_and_every_gradient_of_one_4096_token_pass(arch, tuned_state):
    assert_same_step(NextTokenTask(perturbed_model(arch, tuned_state)).train(), random_batch(), 512)


def test_state_tuning_gets_the_gradient_of_its_initial_state_through_segment_0():
    """Only att.time_state trains: the segments' start states must still carry the gradient back."""
    task = NextTokenTask(perturbed_model("finch", tuned_state=True)).train()
    prepare_for_mode(task, TrainConfig(train_mode="state"))
    assert_same_step(task, random_batch(), 512)
    assert all(p.grad is None for n, p in task.named_parameters() if not n.endswith("time_state"))


def test_a_shorter_last_segment_and_a_batch_of_several_sequences():
    task = NextTokenTask(perturbed_model("finch")).train()
    assert_same_step(task, random_batch(batch_size=3, length=1000), 384)   # 384, 384, 232


def test_l2wrap_adds_the_gradient_of_its_penalty_over_the_whole_sequence():
    """L2Wrap's gradient is that of 1e-4 * sum(max logit^2) / (2 * B * T) with the whole batch's B*T,
    also when the sequence is trained in segments (each segment has only T / 8 positions)."""
    model = perturbed_model("finch")
    with torch.no_grad():
        model.head.weight.mul_(30)   # large logits: the penalty's gradient is far from negligible
    batch = random_batch()
    plain = NextTokenTask(model, l2wrap=False).train()
    plain.zero_grad(set_to_none=True)
    logits, _ = model(batch.inputs)
    ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch.targets.flatten())
    penalty = 1e-4 * logits.max(-1).values.square().sum() / (2 * batch.num_tokens)
    (ce + penalty).backward()
    expected = {n: p.grad.clone() for n, p in plain.named_parameters()}
    without = one_pass_gradients(plain, batch)[1]["model.head.weight"]
    # the penalty changes the head's gradient far beyond the tolerance
    assert (expected["model.head.weight"] - without).abs().max() > 100 * 1e-5 * without.abs().max()
    wrapped = NextTokenTask(model, l2wrap=True).train()
    for grads in (one_pass_gradients(wrapped, batch)[1], segment_gradients(wrapped, batch, 512)[1]):
        for name, grad in expected.items():
            torch.testing.assert_close(grads[name], grad, rtol=1e-5, atol=1e-5 * grad.abs().max().item(), msg=name)


def test_evaluation_in_segments_gives_the_one_pass_loss():
    task = NextTokenTask(perturbed_model("eagle")).eval()
    batch = random_batch(batch_size=2, length=1000)
    with torch.no_grad():
        torch.testing.assert_close(task.loss_in_segments(batch, 300), task(batch), rtol=1e-6, atol=0)


def test_a_run_in_segments_logs_the_losses_of_one_without_and_resumes_bit_identically(tmp_path):
    train_data, val_data = write_dataset(tmp_path / "data", {"train": patterned_docs(40, 0), "val": patterned_docs(5, 1)})
    cfg = TrainConfig(max_steps=6, decay_steps=6, batch_size=2, ctx_len=32, log_every=1, val_every=3, save_every=3,
                      warmup_steps=2, lr_init=3e-3)
    segmented = dataclasses.replace(cfg, segment_len=8)
    for name, c in (("plain", cfg), ("segments", segmented), ("half", dataclasses.replace(segmented, max_steps=3))):
        train(NextTokenTask(perturbed_model("finch")), c, train_data, tmp_path / name, val_data=val_data, progress=False)
    train(NextTokenTask(perturbed_model("finch")), segmented, train_data, tmp_path / "half", val_data=val_data,
          resume=True, progress=False)
    plain, segments, resumed = (read_metrics(tmp_path / name / "metrics.jsonl") for name in ("plain", "segments", "half"))
    assert [r["step"] for r in plain] == [r["step"] for r in segments] == [r["step"] for r in resumed]
    for rp, rs, rr in zip(plain, segments, resumed):
        for key in ("loss", "val_loss"):
            if key in rp:
                assert rs[key] == pytest.approx(rp[key], rel=1e-5), (rp, rs)
                assert rr[key] == rs[key], (rs, rr)   # bit-exact on the CPU
    losses = [r["loss"] for r in plain if "loss" in r]
    assert losses[-1] < losses[0] - 0.2   # it learned: the runs compared are real training


def test_bad_segment_settings_are_refused(tmp_path):
    with pytest.raises(ValueError, match="segment_len must be positive"):
        TrainConfig(segment_len=0)
    with pytest.raises(ValueError, match="segment_len cannot be combined with compile"):
        TrainConfig(segment_len=64, compile=True)
    with pytest.raises(ValueError, match="not supported under DeepSpeed"):
        train(NextTokenTask(perturbed_model("finch")), TrainConfig(segment_len=64), None, tmp_path / "run",
              deepspeed_config="deepspeed/zero1")
    assert not (tmp_path / "run").exists()


def test_visual_training_refuses_segments_before_reading_anything(tmp_path):
    from eaglefinch.visual.train import train_visual
    config = tmp_path / "visual.json"
    config.write_text(json.dumps({"train": {"segment_len": 64}}))
    with pytest.raises(ValueError, match="visual training does not read samples in segments"):
        train_visual(config, tmp_path / "missing.jsonl", tmp_path / "run", random_encoder=True)
    assert not (tmp_path / "run").exists()
