"""Chunked WKV in plain PyTorch: the CPU path for training and prefill.

Within a chunk of L tokens the recurrence becomes dense algebra (kernels/README.md derives it).
Every exponent is a sum of log decays, so it is <= 0 and nothing overflows however strong the
decay: the intra-chunk weights are built per key channel as an [L, L, N] tensor instead of being
split into exp(a_t) * exp(-a_i), which overflows fp32 for strong decays.
"""
import torch
import torch.nn.functional as F


def wkv_chunked(r, k, v, w_log, u, state=None, chunk_size=16):
    """Same contract as `naive.wkv_reference`; computes in fp32 (fp64 for fp64 inputs)."""
    B, T, H, N = r.shape
    out_dtype = r.dtype
    dt = torch.promote_types(torch.float32, r.dtype)
    S = r.new_zeros(B, H, N, N, dtype=dt) if state is None else state.to(dt)
    if T == 0:
        return r.new_zeros(B, 0, H, N), S
    r, k, v = (x.to(dt) for x in (r, k, v))
    w_log = w_log.to(dt).expand(B, T, H, N)
    u = u.to(dt)
    if T == 1:  # decode: one step of the recurrence is cheaper than the chunk algebra
        r1, k1, v1 = r[:, 0], k[:, 0], v[:, 0]                                # [B, H, N]
        kv = k1[..., :, None] * v1[..., None, :]                              # [B, H, N, N]
        y = torch.einsum("bhi,bhij->bhj", r1, u[..., None] * kv + S)
        S = w_log[:, 0, ..., None].exp() * S + kv
        return y[:, None].to(out_dtype), S

    L = chunk_size
    pad = (-T) % L
    if pad:  # zero-padded tokens (k = v = 0, no decay) leave outputs and state untouched
        r, k, v, w_log = (F.pad(x, (0, 0, 0, 0, 0, pad)) for x in (r, k, v, w_log))
    C = (T + pad) // L
    # [B, H, C, L, N]
    r, k, v, w_log = (x.view(B, C, L, H, N).permute(0, 3, 1, 2, 4) for x in (r, k, v, w_log))
    # decay sums are built as exact segment sums, never as differences of running totals: a huge
    # early decay would otherwise cancel catastrophically against the small later ones
    a = w_log.cumsum(dim=3)                                           # sum_{m <= t} w_m
    a_prev = F.pad(a[:, :, :, :-1], (0, 0, 1, 0))                     # sum_{m < t} w_m (from chunk start)
    to_end = F.pad(w_log.flip(3).cumsum(3).flip(3)[:, :, :, 1:], (0, 0, 0, 1))  # sum_{m > t} w_m
    a_last = a[:, :, :, -1]                                           # [B, H, C, N]

    # intra-chunk: A[t, i] = sum_n r_t[n] k_i[n] exp(sum_{i < m < t} w_m[n]) for i < t
    causal = torch.ones(L, L, dtype=torch.bool, device=r.device).tril(-1)[..., None]   # [L(t), L(i), 1]
    after_i = torch.where(causal, w_log[..., :, None, :], 0.0).cumsum(3)   # [.., t, i, n]: sum_{i < m <= t}
    between = F.pad(after_i[:, :, :, :-1], (0, 0, 0, 0, 1, 0))            # sum_{i < m < t}
    decay = torch.where(causal, between, float("-inf")).exp()             # [B, H, C, L, L, N]
    A = torch.einsum("bhctn,bhcin,bhctin->bhcti", r, k, decay)
    bonus = (r * u[:, None, None, :] * k).sum(-1, keepdim=True)           # [B, H, C, L, 1]
    y = A @ v + bonus * v

    # inter-chunk: carry S across chunks; per-chunk increments computed in parallel
    increments = (k * to_end.exp()).transpose(-1, -2) @ v                             # [B, H, C, N, N]
    chunk_decay = a_last.exp()                                                         # [B, H, C, N]
    starts = []
    for c in range(C):
        starts.append(S)
        S = chunk_decay[:, :, c, :, None] * S + increments[:, :, c]
    S_start = torch.stack(starts, dim=2)                                               # [B,H,C,N,N]
    y = y + (r * a_prev.exp()) @ S_start

    y = y.permute(0, 2, 3, 1, 4).reshape(B, C * L, H, N)[:, :T]
    return y.to(out_dtype), S
