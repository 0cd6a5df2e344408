"""The language-model loss (rwkv_core/loss.py): the chunked head + cross-entropy + L2Wrap against an
fp64 reference written out here, and against the plain twin through a whole model (loss and every
parameter's gradient), for the full batch and for parts of it that carry the state."""
import copy

import pytest
import torch
import torch.nn.functional as F

from eaglefinch.rwkv_core import RWKV, RWKVConfig
from eaglefinch.rwkv_core.data import Batch
from eaglefinch.rwkv_core.loss import L2WRAP_COEF, chunked_head_loss, head_loss, plain_head_loss
from eaglefinch.rwkv_core.train import NextTokenTask, TrainConfig, make_optimizer

N, C, V = 37, 16, 50


def inputs(seed=0, weight_grad=True):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, C, generator=g, requires_grad=True)
    weight = (torch.randn(V, C, generator=g) * 0.5).requires_grad_(weight_grad)
    targets = torch.randint(0, V, (N,), generator=g)
    return hidden, weight, targets


def reference(hidden, weight, targets, num_tokens, l2wrap, grad_scale):
    """fp64: the summed cross-entropy / num_tokens and its gradients times grad_scale, plus (unscaled,
    as the official L2Wrap) 1e-4 * max logit / num_tokens on each token's largest logit."""
    h, w = hidden.detach().double().requires_grad_(), weight.detach().double().requires_grad_()
    logits = h @ w.T
    loss = F.cross_entropy(logits, targets, reduction="sum") / num_tokens
    grad_h, grad_w = torch.autograd.grad(loss * grad_scale, (h, w))
    if l2wrap:
        max_vals, max_ids = logits.detach().max(dim=-1)
        coef = L2WRAP_COEF * max_vals / num_tokens
        grad_h = grad_h + coef[:, None] * w.detach()[max_ids]
        grad_w = grad_w.index_add(0, max_ids, coef[:, None] * h.detach())
    return loss.detach(), grad_h, grad_w


def rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


@pytest.mark.parametrize("chunked", [True, False])
@pytest.mark.parametrize("l2wrap,num_tokens,grad_scale", [(True, N, 1.0), (True, 3 * N, 0.5), (False, 2 * N, 2.0)])
def test_head_loss_matches_the_fp64_reference(chunked, l2wrap, num_tokens, grad_scale):
    hidden, weight, targets = inputs()
    if chunked:  # chunks of 8 tokens: four whole chunks and a short last one
        loss = chunked_head_loss(hidden, weight, targets, num_tokens, l2wrap=l2wrap, chunk_tokens=8)
    else:
        loss = plain_head_loss(hidden, weight, targets, num_tokens, l2wrap=l2wrap)
    (loss * grad_scale).backward()
    ref_loss, ref_h, ref_w = reference(hidden, weight, targets, num_tokens, l2wrap, grad_scale)
    assert rel(loss, ref_loss) < 1e-6
    assert rel(hidden.grad, ref_h) < 1e-5
    assert rel(weight.grad, ref_w) < 1e-5


def test_chunked_loss_with_a_frozen_head_and_without_gradients():
    hidden, weight, targets = inputs(1, weight_grad=False)
    loss = head_loss(hidden, weight, targets, l2wrap=True)
    loss.backward()
    ref_loss, ref_h, _ = reference(hidden, weight, targets, N, True, 1.0)
    assert weight.grad is None
    assert rel(loss, ref_loss) < 1e-6 and rel(hidden.grad, ref_h) < 1e-5
    with torch.no_grad():
        assert rel(head_loss(hidden, weight, targets), ref_loss) < 1e-6


def test_chunked_loss_under_bf16_autocast_stays_near_the_plain_one():
    """bf16 logits either way; the chunked path keeps fp32 gradients, the plain one rounds them to bf16."""
    hidden, weight, targets = inputs(2)
    grads = []
    for chunked in (True, False):
        hidden.grad = weight.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = head_loss(hidden, weight, targets, chunked=chunked)
        loss.backward()
        assert loss.dtype == torch.float32 and hidden.grad.dtype == weight.grad.dtype == torch.float32
        grads.append((loss.detach(), hidden.grad.clone(), weight.grad.clone()))
    for a, b in zip(*grads):
        assert rel(a, b) < 2e-2


def test_head_loss_refuses_mismatched_shapes():
    hidden, weight, targets = inputs()
    with pytest.raises(ValueError, match="head_loss"):
        head_loss(hidden[:, :-1], weight, targets)
    with pytest.raises(ValueError, match="head_loss"):
        head_loss(hidden, weight, targets[:-1])


def tiny_finch(seed=0):
    torch.manual_seed(seed)
    model = RWKV(RWKVConfig(arch="finch", n_layer=2, n_embd=32, head_size=16, vocab_size=64, mix_lora_dim=4,
                            decay_lora_dim=8))
    with torch.no_grad():  # off the official init, which zeroes several matrices
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def batch(seed=0, B=2, T=16):
    g = torch.Generator().manual_seed(seed)
    return Batch(torch.randint(0, 64, (B, T), generator=g), torch.randint(0, 64, (B, T), generator=g))


def loss_and_grads(task, fn):
    task.zero_grad(set_to_none=True)
    loss = fn(task)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in task.named_parameters()}


def assert_same(a, b, rtol=1e-5):
    (loss_a, grads_a), (loss_b, grads_b) = a, b
    assert rel(loss_a, loss_b) < 1e-6
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        assert rel(grads_a[name], grads_b[name]) < rtol, name


def test_next_token_task_chunked_equals_plain_through_the_model():
    model, b = tiny_finch(), batch()
    chunked = loss_and_grads(NextTokenTask(model), lambda task: task(b))
    plain = loss_and_grads(NextTokenTask(copy.deepcopy(model), chunked_loss=False), lambda task: task(b))
    assert_same(chunked, plain)
    checkpointed = NextTokenTask(copy.deepcopy(model))
    checkpointed.model.grad_checkpointing = True
    assert_same(loss_and_grads(checkpointed, lambda task: task(b)), plain)
    # the plain task is today's objective: the mean cross-entropy of the logits (L2Wrap changes no value)
    logits, _ = model(b.inputs)
    assert rel(chunked[0], F.cross_entropy(logits.flatten(0, 1), b.targets.flatten())) < 1e-6


@pytest.mark.parametrize("chunked_loss", [True, False])
def test_sequence_loss_of_parts_adds_up_to_the_whole_batch(chunked_loss):
    """Two halves of the sequences, the second from the first's state, each divided by the whole
    batch's token count: the same loss and gradients (L2Wrap's included) as the batch in one go."""
    task, b = NextTokenTask(tiny_finch(), chunked_loss=chunked_loss), batch(1)
    whole = loss_and_grads(task, lambda t: t(b))

    def in_two_parts(t):
        total = b.targets.numel()
        first, state = t.sequence_loss(b.inputs[:, :9], b.targets[:, :9], None, total)
        second, _ = t.sequence_loss(b.inputs[:, 9:], b.targets[:, 9:], state, total)
        return first + second
    assert_same(loss_and_grads(task, in_two_parts), whole)


def test_fused_adamw_steps_as_the_default_one():
    """make_optimizer(fused=True) (the CUDA trainer's; the CPU has the kernel too) keeps the official
    groups and steps as the foreach/for-loop AdamW does."""
    cfg = TrainConfig(weight_decay=0.1, lr_init=1e-2)
    tasks = [NextTokenTask(tiny_finch()) for _ in range(2)]
    optimizers = [make_optimizer(task, cfg, fused=fused) for task, fused in zip(tasks, (True, False))]
    assert optimizers[0].defaults["fused"] and not optimizers[1].defaults["fused"]
    for step in range(3):
        for task, opt in zip(tasks, optimizers):
            task(batch(step)).backward()
            opt.step()
            opt.zero_grad()
    for (name, a), (_, b) in zip(tasks[0].named_parameters(), tasks[1].named_parameters()):
        assert rel(a.detach(), b.detach()) < 1e-5, name


@pytest.mark.slow
def test_compiled_blocks_and_loss_equal_the_eager_plain_task():
    """The GPU fast path (torch.compile of each block around the WKV op, with the recomputed ddlerp,
    and of the chunked loss's softmax; here Inductor's CPU backend), with and without gradient
    checkpointing, against the eager model and the plain loss."""
    model, b = tiny_finch(2), batch(2)
    plain = loss_and_grads(NextTokenTask(copy.deepcopy(model), chunked_loss=False), lambda task: task(b))
    for checkpointing in (False, True):
        fast = NextTokenTask(copy.deepcopy(model))
        fast.model.compiled, fast.model.grad_checkpointing = True, checkpointing
        assert_same(loss_and_grads(fast, lambda task: task(b)), plain)
