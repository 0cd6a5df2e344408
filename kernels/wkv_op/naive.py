"""Serial WKV recurrence: the slow, obvious twin every other WKV implementation is tested against.

Per head, with key index i and value index j (see kernels/README.md):

    y_t[j]    = sum_i r_t[i] * (u[i] * k_t[i] * v_t[j] + S_{t-1}[i, j])
    S_t[i, j] = exp(w_log_t[i]) * S_{t-1}[i, j] + k_t[i] * v_t[j]
"""
import torch


def wkv_reference(r, k, v, w_log, u, state=None, dtype=torch.float64):
    """Token-by-token WKV in `dtype` (fp64 by default).

    Args:
        r, k, v: [B, T, H, N] receptance, key, value.
        w_log: log decay (<= 0), [B, T, H, N], or anything broadcastable to it (Eagle: [H, N]).
        u: bonus of the current token, [H, N].
        state: initial state [B, H, N, N] indexed [key, value], or None for zeros.

    Returns:
        out [B, T, H, N] in r's dtype and the final state [B, H, N, N] (fp32, or fp64 for fp64 inputs).
    """
    B, T, H, N = r.shape
    out_dtype = r.dtype
    state_dtype = torch.promote_types(torch.float32, r.dtype)
    r, k, v = (x.to(dtype) for x in (r, k, v))
    decay = w_log.to(dtype).expand(B, T, H, N).exp()
    u = u.to(dtype)
    S = r.new_zeros(B, H, N, N) if state is None else state.to(dtype)
    ys = []
    for t in range(T):
        kv = k[:, t, :, :, None] * v[:, t, :, None, :]                      # [B, H, N, N]
        ys.append(torch.einsum("bhi,bhij->bhj", r[:, t], u[:, :, None] * kv + S))
        S = decay[:, t, :, :, None] * S + kv
    out = torch.stack(ys, dim=1) if T > 0 else r.new_zeros(B, 0, H, N)
    return out.to(out_dtype), S.to(state_dtype)
