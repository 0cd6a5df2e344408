"""Random checkpoints in the official BlinkDL layout, written from the key list of rwkv-math.md §3.1
(independently of our model code, so loading them tests the loader and the math)."""
import torch


def random_official_state_dict(arch, n_layer, n_embd, vocab_size, head_size=64, mix_lora=32, decay_lora=64,
                               decay="slow", tuned_state=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    C, A, N = n_embd, n_embd, head_size
    H = A // N
    Fd = int(3.5 * C) // 32 * 32

    def randn(*shape, scale=1.0):
        return torch.randn(*shape, generator=g) * scale

    def unif(lo, hi, *shape):
        return lo + (hi - lo) * torch.rand(*shape, generator=g)

    def mat(out_dim, in_dim):
        return randn(out_dim, in_dim, scale=in_dim ** -0.5)

    def ln(prefix, sd):
        sd[prefix + ".weight"] = 1 + randn(C, scale=0.1)
        sd[prefix + ".bias"] = randn(C, scale=0.1)

    decay_range = {"slow": (-9.0, -4.0), "typical": (-6.0, 0.0), "fast": (-1.0, 2.0)}[decay]
    sd = {"emb.weight": randn(vocab_size, C)}
    for l in range(n_layer):
        p = f"blocks.{l}."
        ln(p + "ln1", sd)
        ln(p + "ln2", sd)
        if l == 0:
            ln(p + "ln0", sd)
        if arch == "eagle":
            for name in "kvrg":
                sd[p + f"att.time_mix_{name}"] = unif(0, 1, 1, 1, C)
            sd[p + "att.time_decay"] = unif(*decay_range, H, N)
        else:
            for name in "xwkvrg":
                sd[p + f"att.time_maa_{name}"] = unif(0, 1, 1, 1, C)
            sd[p + "att.time_maa_w1"] = randn(C, 5 * mix_lora, scale=0.1)
            sd[p + "att.time_maa_w2"] = randn(5, mix_lora, C, scale=0.1)
            sd[p + "att.time_decay"] = unif(*decay_range, 1, 1, A)
            sd[p + "att.time_decay_w1"] = randn(C, decay_lora, scale=0.1)
            sd[p + "att.time_decay_w2"] = randn(decay_lora, A, scale=0.1)
        sd[p + "att.time_faaaa"] = randn(H, N, scale=0.5)
        for name in ("receptance", "key", "value", "gate"):
            sd[p + f"att.{name}.weight"] = mat(A, C)
        sd[p + "att.output.weight"] = mat(C, A)
        sd[p + "att.ln_x.weight"] = 1 + randn(A, scale=0.1)
        sd[p + "att.ln_x.bias"] = randn(A, scale=0.1)
        mix = "time_mix" if arch == "eagle" else "time_maa"
        sd[p + f"ffn.{mix}_k"] = unif(0, 1, 1, 1, C)
        sd[p + f"ffn.{mix}_r"] = unif(0, 1, 1, 1, C)
        sd[p + "ffn.key.weight"] = mat(Fd, C)
        sd[p + "ffn.receptance.weight"] = mat(C, C)
        sd[p + "ffn.value.weight"] = mat(C, Fd)
        if tuned_state:
            sd[p + "att.time_state"] = randn(H, N, N, scale=0.3)
    ln("ln_out", sd)
    sd["head.weight"] = mat(vocab_size, C)
    return sd
