"""Chunked WKV in plain PyTorch: the CPU path for training and prefill.

Within a chunk of L tokens the recurrence becomes dense algebra (kernels/README.md derives it).
Every exponent is a difference of inclusive log-decay cumsums taken in the "later minus earlier"
direction, so it is <= 0 and nothing overflows, however strong the decay: the intra-chunk
weights are built per key channel as an [L, L, N] tensor instead of being split into
exp(a_t) * exp(-a_i) (which overflows fp32 for strong decays).
"""
import torch
import torch.nn.functional as F


def wkv_chunked(r, k, v, w_log, u, state=None, chunk_size=16):
    """Same contract as `kernels.reference.wkv_reference`; computes in fp32 (fp64 for fp64 inputs)."""
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
    a = w_log.cumsum(dim=3)                      # inclusive cumsum a_t
    a_prev = a - w_log                           # exclusive cumsum a_{t-1}
    a_last = a[:, :, :, -1:, :]                  # [B, H, C, 1, N]

    # intra-chunk: A[t, i] = sum_c r_t[c] k_i[c] exp(a_{t-1}[c] - a_i[c]) for i < t
    causal = torch.ones(L, L, dtype=torch.bool, device=r.device).tril(-1)[..., None]   # [L, L, 1]
    diff = a_prev[..., :, None, :] - a[..., None, :, :]                                # [B,H,C,L,L,N]
    decay = torch.where(causal, diff, float("-inf")).exp()
    A = torch.einsum("bhctn,bhcin,bhctin->bhcti", r, k, decay)
    bonus = (r * u[:, None, None, :] * k).sum(-1, keepdim=True)                       # [B,H,C,L,1]
    y = A @ v + bonus * v

    # inter-chunk: carry S across chunks; per-chunk increments computed in parallel
    k_to_end = k * (a_last - a).exp()                                                  # [B,H,C,L,N]
    increments = k_to_end.transpose(-1, -2) @ v                                        # [B,H,C,N,N]
    chunk_decay = a_last.squeeze(3).exp()                                              # [B,H,C,N]
    starts = []
    for c in range(C):
        starts.append(S)
        S = chunk_decay[:, :, c, :, None] * S + increments[:, :, c]
    S_start = torch.stack(starts, dim=2)                                               # [B,H,C,N,N]
    y = y + (r * a_prev.exp()) @ S_start

    y = y.permute(0, 2, 3, 1, 4).reshape(B, C * L, H, N)[:, :T]
    return y.to(out_dtype), S
