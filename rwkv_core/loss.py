"""The language-model loss from the final hidden states: head, cross-entropy and the official L2Wrap.

    loss = head_loss(hidden [N, C], head_weight [V, C], targets [N], num_tokens, l2wrap=True)

The loss is the summed cross-entropy of these N tokens divided by `num_tokens`: the batch's mean
when num_tokens = N, and a share of it when the batch is computed in parts (segments of long
sequences), whose losses and gradients then add up to the whole batch's. L2Wrap's factor uses
`num_tokens` too.

Two ways, one result: `plain_head_loss` holds the whole logits [N, V] (and their fp32 copy), the
obvious twin; `chunked_head_loss` never does. It takes the tokens in chunks, computes each chunk's
logits in the compute dtype (bf16 under autocast), its loss and, in the same pass, the gradients
wrt the hidden states and the head weight, and keeps only those: at Finch-1.6B size and 4 x 4096
tokens, under 2 GB (one chunk, the head's gradient) instead of over 10 GB of logits, their fp32
copies and gradients, and no pass over the head in the backward.
"""
import functools
import math

import torch
import torch.nn.functional as F

L2WRAP_COEF = 1e-4
CHUNK_LOGITS = 2 ** 27   # logits per chunk (tokens x vocabulary): 2048 tokens at V = 65536, 512 MB in fp32


class L2Wrap(torch.autograd.Function):
    """Identity on the loss; in backward, adds to each position's largest logit a gradient of
    1e-4 * max_logit / num_tokens (default: the logits' positions, B*T), the gradient of
    1e-4 * mean(max logit^2) / 2, keeping logits near 0. As in the official trainer, that gradient
    does not scale with the loss's gradient."""

    @staticmethod
    def forward(ctx, loss, logits, num_tokens=None):
        ctx.save_for_backward(logits)
        ctx.num_tokens = num_tokens or math.prod(logits.shape[:-1])
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        (logits,) = ctx.saved_tensors
        factor = L2WRAP_COEF / ctx.num_tokens
        max_vals, max_ids = logits.max(dim=-1, keepdim=True)
        grad_logits = torch.zeros_like(logits).scatter_(-1, max_ids, max_vals * factor)
        return grad_output, grad_logits, None


def head_loss(hidden, head_weight, targets, num_tokens=None, *, l2wrap=True, chunked=True, compile=False):
    """Cross-entropy of `targets` [N] under the logits hidden [N, C] @ head_weight [V, C]^T, summed and
    divided by `num_tokens` (default N), plus L2Wrap when `l2wrap`: `chunked_head_loss` or, with
    chunked=False, `plain_head_loss`. `compile` fuses the chunked loss's per-chunk softmax."""
    if hidden.dim() != 2 or targets.shape != hidden.shape[:1] or head_weight.shape[1:] != hidden.shape[1:]:
        raise ValueError(f"head_loss: needs hidden [N, C], head_weight [V, C] and targets [N], got "
                         f"{tuple(hidden.shape)}, {tuple(head_weight.shape)}, {tuple(targets.shape)}")
    num_tokens = num_tokens or targets.numel()
    if chunked:
        return chunked_head_loss(hidden, head_weight, targets, num_tokens, l2wrap=l2wrap, compile=compile)
    return plain_head_loss(hidden, head_weight, targets, num_tokens, l2wrap=l2wrap)


def plain_head_loss(hidden, head_weight, targets, num_tokens, *, l2wrap=True):
    """The whole logits [N, V] at once, the cross-entropy on their fp32 copy, L2Wrap on them."""
    logits = F.linear(hidden, head_weight)
    loss = F.cross_entropy(logits.float(), targets, reduction="sum") / num_tokens
    return L2Wrap.apply(loss, logits, num_tokens) if l2wrap else loss


def chunked_head_loss(hidden, head_weight, targets, num_tokens, *, l2wrap=True, chunk_tokens=None, compile=False):
    """`plain_head_loss` in chunks of `chunk_tokens` tokens (default: CHUNK_LOGITS logits a chunk),
    in the autocast dtype when autocast is on (else the hidden states' dtype)."""
    device = hidden.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
    chunk_tokens = chunk_tokens or max(1, CHUNK_LOGITS // head_weight.shape[0])
    softmax = compiled_chunk_softmax() if compile else chunk_softmax
    return ChunkedHeadLoss.apply(hidden, head_weight, targets, num_tokens, l2wrap, dtype, chunk_tokens, softmax)


def chunk_softmax(logits, targets):
    """One chunk's summed cross-entropy, its largest logits and their ids (for L2Wrap), and the
    cross-entropy's gradient wrt the logits, softmax - onehot(targets), in the logits' dtype."""
    logits32 = logits.float()
    lse = torch.logsumexp(logits32, dim=-1, keepdim=True)
    loss = (lse - logits32.gather(1, targets[:, None])).sum()
    max_vals, max_ids = logits32.max(dim=-1)
    # in place: the fp32 logits are not needed any more
    grad = logits32.sub_(lse).exp_().scatter_add_(1, targets[:, None], -torch.ones_like(lse))
    return loss, max_vals, max_ids, grad.to(logits.dtype)


@functools.cache
def compiled_chunk_softmax():
    """`chunk_softmax` through torch.compile: two reads of the chunk's logits and one write, instead of
    about a dozen fp32 passes."""
    return torch.compile(chunk_softmax, dynamic=False)


class ChunkedHeadLoss(torch.autograd.Function):
    """The forward computes the loss and, chunk by chunk, its gradients (for a loss gradient of 1);
    the backward scales them by the loss's actual gradient and adds L2Wrap's, which does not scale
    (one row of the head weight per token, from the largest logits kept in the forward)."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, num_tokens, l2wrap, dtype, chunk_tokens, softmax):
        need_hidden, need_weight = ctx.needs_input_grad[:2]
        with torch.autocast(hidden.device.type, enabled=False):
            h, w = hidden.to(dtype), weight.to(dtype)
            loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
            grad_hidden = torch.empty_like(hidden, dtype=torch.float32) if need_hidden else None
            grad_weight = torch.zeros_like(weight, dtype=torch.float32) if need_weight else None
            max_vals, max_ids = [], []
            for start in range(0, h.shape[0], chunk_tokens):
                rows = slice(start, start + chunk_tokens)
                chunk_loss, chunk_max, chunk_ids, grad_logits = softmax(h[rows] @ w.T, targets[rows])
                loss += chunk_loss
                if need_hidden or need_weight:
                    max_vals.append(chunk_max)
                    max_ids.append(chunk_ids)
                if need_hidden:
                    grad_hidden[rows] = grad_logits @ w
                if need_weight:
                    grad_weight += grad_logits.T @ h[rows]
        ctx.grads = [g.mul_(1 / num_tokens) if g is not None else None for g in (grad_hidden, grad_weight)]
        if l2wrap and (need_hidden or need_weight):
            ctx.save_for_backward(h, w, torch.cat(max_vals) * (L2WRAP_COEF / num_tokens), torch.cat(max_ids))
        ctx.l2wrap, ctx.hidden_dtype, ctx.weight_dtype = l2wrap, hidden.dtype, weight.dtype
        return loss / num_tokens

    @staticmethod
    def backward(ctx, grad_loss):
        if ctx.grads is None:
            raise RuntimeError("ChunkedHeadLoss: backward runs once (its gradients are computed in the "
                               "forward and used up)")
        grad_hidden, grad_weight = (None if g is None else g.mul_(grad_loss) for g in ctx.grads)
        ctx.grads = None
        if ctx.l2wrap and ctx.saved_tensors:
            h, w, l2_grad, max_ids = ctx.saved_tensors  # d loss / d logit[n, max_ids[n]] = l2_grad[n]
            if grad_hidden is not None:
                grad_hidden += l2_grad[:, None] * w[max_ids].float()
            if grad_weight is not None:
                grad_weight.index_add_(0, max_ids, l2_grad[:, None] * h.float())
        return (None if grad_hidden is None else grad_hidden.to(ctx.hidden_dtype),
                None if grad_weight is None else grad_weight.to(ctx.weight_dtype),
                None, None, None, None, None, None)
