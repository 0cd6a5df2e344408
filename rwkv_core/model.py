"""Eagle (RWKV-5.2) and Finch (RWKV-6): one model, the version differences in small named modules.

Parameter names and shapes are the official BlinkDL ones, so `state_dict()` is the official
checkpoint layout. Equations: ../shared/reference/rwkv-math.md §1 (restated in docstrings).
"""
import functools

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from eaglefinch.kernels import host_offsets, wkv

from .config import RWKVConfig
from .state import RWKVState

PROGRESS_DELAY_S = 2.0  # RWKV(cfg, progress=True) shows a bar only when initialising takes longer than this


def uninitialised(module_cls, *args, **kwargs):
    """`module_cls(*args, **kwargs)` (nn.Linear, nn.Embedding) with its weight allocated but not set:
    PyTorch's default init would be overwritten by `RWKV.init_weights`, and on a large model it
    costs seconds. Built on the current default device (meta while a checkpoint is read)."""
    return nn.utils.skip_init(module_cls, *args, device=torch.get_default_device(), **kwargs)


def token_shift(x, prev, cu_seqlens=None):
    """The previous token's input for every position: [B, T, C] from x [B, T, C] and prev [B, C].

    Packed sequences (x [1, T, C], `cu_seqlens` [S + 1] offsets): each sequence starts from its own
    prev [S, C], never from the end of the sequence before it."""
    if cu_seqlens is None:
        return torch.cat([prev[:, None], x[:, :-1]], dim=1)
    shifted = torch.cat([x[:, :1], x[:, :-1]], dim=1)
    return shifted.index_copy(1, cu_seqlens[:-1], prev[None].to(x.dtype))


def last_positions(x, cu_seqlens=None):
    """Each sequence's last position: [B, C] from x [B, T, C], or [S, C] from packed x [1, T, C]."""
    return x[:, -1] if cu_seqlens is None else x[0, cu_seqlens[1:] - 1]


def reversal_index(span, B, T, device=None):
    """[B, T] source position of every position when positions start..end-1 are read in reverse.

    span: one (start, end) for the whole batch, or a list of B such pairs (start == end: nothing
    reversed in that sample). The reversal is its own inverse, so one index flips and flips back."""
    spans = [span] * B if isinstance(span[0], int) else list(span)
    if len(spans) != B:
        raise ValueError(f"reverse_span has {len(spans)} spans for a batch of {B}")
    index = torch.arange(T, device=device).repeat(B, 1)
    for b, (start, end) in enumerate(spans):
        index[b, start:end] = torch.arange(end - 1, start - 1, -1, device=device)
    return index


def gather_positions(x, index):
    """x [B, T, C] read at positions index [B, T]."""
    return x.gather(1, index.unsqueeze(-1).expand_as(x))


def check_cu_seqlens(cu_seqlens, B, T):
    """The number of packed sequences S of offsets [S + 1]; refuses what is not B = 1, 0 < ... < T."""
    if B != 1 or cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        raise ValueError("cu_seqlens needs B = 1 and offsets [0, ..., T] of at least one sequence")
    offsets = host_offsets(cu_seqlens)   # the host copy the WKV op reuses in every layer: one sync
    lengths = offsets[1:] - offsets[:-1]
    if int(offsets[0]) != 0 or int(offsets[-1]) != T or not bool((lengths > 0).all()):
        raise ValueError(f"cu_seqlens must rise from 0 to T = {T} with every sequence non-empty, "
                         f"got {offsets.tolist()}")
    return cu_seqlens.numel() - 1


def _layer_ratios(layer_id, n_layer):
    r0 = layer_id / (n_layer - 1) if n_layer > 1 else 0.0   # official code divides by zero at L = 1
    r1 = 1.0 - layer_id / n_layer
    return r0, r1


class TimeMix(nn.Module):
    """Shared part of the time-mix: projections, WKV, per-head GroupNorm (ln_x), SiLU gate, output.

    Three steps, which the block runs in turn: `mix` (in the subclasses) computes (r, k, v, g, w_log)
    from the input and its token-shifted copy (g before its SiLU), `recurrence` the WKV op, and
    `readout` the output.
    """

    def __init__(self, cfg: RWKVConfig, layer_id: int):
        super().__init__()
        C, A, H, N = cfg.n_embd, cfg.dim_att, cfg.n_head, cfg.head_size
        self.n_head, self.head_size = H, N
        r0, _ = _layer_ratios(layer_id, cfg.n_layer)
        n = torch.arange(A, dtype=torch.float32)
        self.time_faaaa = nn.Parameter((r0 * (1 - n / (A - 1)) + 0.1 * ((n + 1) % 3 - 1)).view(H, N))
        self.receptance = uninitialised(nn.Linear, C, A, bias=False)
        self.key = uninitialised(nn.Linear, C, A, bias=False)
        self.value = uninitialised(nn.Linear, C, A, bias=False)
        self.gate = uninitialised(nn.Linear, C, A, bias=False)
        self.output = uninitialised(nn.Linear, A, C, bias=False)
        self.ln_x = nn.GroupNorm(H, A, eps=64e-5)  # = GroupNorm(y / 8) with eps 1e-5 of the v5.2 code
        if cfg.tuned_state:
            self.time_state = nn.Parameter(torch.zeros(H, N, N))  # official layout [head, value, key]

    def initial_wkv(self, batch_size, device):
        """The WKV state a sequence starts from: zeros, or the tuned state ([B, H, key, value], fp32)."""
        if hasattr(self, "time_state"):
            return self.time_state.float().transpose(1, 2).expand(batch_size, -1, -1, -1)
        return torch.zeros(batch_size, self.n_head, self.head_size, self.head_size, device=device)

    def recurrence(self, r, k, v, w_log, wkv_state, cu_seqlens=None):
        """The WKV op on r, k, v [B, T, A] and the log decay w_log (Finch: [B, T, H, N], Eagle: [H, N])
        from wkv_state [B, H, N, N] fp32 (packed: one per sequence). Returns (y [B, T, H, N], new state)."""
        B, T, _ = r.shape
        H, N = self.n_head, self.head_size
        return wkv(r.view(B, T, H, N), k.view(B, T, H, N), v.view(B, T, H, N), w_log, self.time_faaaa.float(),
                   wkv_state, cu_seqlens=cu_seqlens)

    def readout(self, y, g):
        """The WKV output y [B, T, H, N] -> per-head GroupNorm (fp32) -> gate SiLU(g) -> output: [B, T, C].
        (The SiLU is applied here, so that training keeps only the gate's input for the backward.)"""
        B, T, H, N = y.shape
        y = F.group_norm(y.reshape(B * T, H * N).float(), H, self.ln_x.weight.float(),
                         self.ln_x.bias.float(), self.ln_x.eps).view(B, T, H * N)
        return self.output(y.to(g.dtype) * F.silu(g))


class TimeMixEagle(TimeMix):
    """v5.2: static lerps (weight on the current token) and a static per-channel decay."""

    def __init__(self, cfg: RWKVConfig, layer_id: int):
        super().__init__(cfg, layer_id)
        C, A = cfg.n_embd, cfg.dim_att
        r0, r1 = _layer_ratios(layer_id, cfg.n_layer)
        ddd = (torch.arange(C, dtype=torch.float32) / C).view(1, 1, C)
        self.time_mix_k = nn.Parameter(ddd ** r1)
        self.time_mix_v = nn.Parameter(ddd ** r1 + 0.3 * r0)
        self.time_mix_r = nn.Parameter(ddd ** (0.5 * r1))
        self.time_mix_g = nn.Parameter(ddd ** (0.5 * r1))
        n = torch.arange(A, dtype=torch.float32)
        decay = -6 + 5 * (n / (A - 1)) ** (0.7 + 1.3 * r0)
        self.time_decay = nn.Parameter(decay.view(self.n_head, self.head_size))

    def mix(self, x, prev):
        xk = torch.lerp(prev, x, self.time_mix_k)
        xv = torch.lerp(prev, x, self.time_mix_v)
        xr = torch.lerp(prev, x, self.time_mix_r)
        xg = torch.lerp(prev, x, self.time_mix_g)
        w_log = -torch.exp(self.time_decay.float())                      # [H, N], log of w = exp(-exp(d))
        return self.receptance(xr), self.key(xk), self.value(xv), self.gate(xg), w_log


class TimeMixFinch(TimeMix):
    """v6: data-dependent lerp (ddlerp, one 5-way LoRA, order w,k,v,r,g) and per-token decay (LoRA)."""

    def __init__(self, cfg: RWKVConfig, layer_id: int):
        super().__init__(cfg, layer_id)
        C, A, D, Dd = cfg.n_embd, cfg.dim_att, cfg.mix_lora_dim, cfg.decay_lora_dim
        r0, r1 = _layer_ratios(layer_id, cfg.n_layer)
        ddd = (torch.arange(C, dtype=torch.float32) / C).view(1, 1, C)
        self.time_maa_x = nn.Parameter(1 - ddd ** r1)
        self.time_maa_w = nn.Parameter(1 - ddd ** r1)
        self.time_maa_k = nn.Parameter(1 - ddd ** r1)
        self.time_maa_v = nn.Parameter(1 - (ddd ** r1 + 0.3 * r0))
        self.time_maa_r = nn.Parameter(1 - ddd ** (0.5 * r1))
        self.time_maa_g = nn.Parameter(1 - ddd ** (0.5 * r1))
        self.time_maa_w1 = nn.Parameter(torch.zeros(C, 5 * D))
        self.time_maa_w2 = nn.Parameter(torch.empty(5, D, C).uniform_(-0.01, 0.01))
        n = torch.arange(A, dtype=torch.float32)
        self.time_decay = nn.Parameter((-6 + 5 * (n / (A - 1)) ** (0.7 + 1.3 * r0)).view(1, 1, A))
        self.time_decay_w1 = nn.Parameter(torch.zeros(C, Dd))
        self.time_decay_w2 = nn.Parameter(torch.empty(Dd, A).uniform_(-0.01, 0.01))

    def mix(self, x, prev):
        B, T, C = x.shape
        delta = prev - x
        if torch.compiler.is_compiling():
            # compiled, the lerps are recomputed in the backward (fused there) from x and delta, instead
            # of keeping their five LoRA offsets or the projections' five inputs ([B, T, C] bf16 each)
            xw, xk, xv, xr, xg = torch.utils.checkpoint.checkpoint(self.ddlerp, x, delta, use_reentrant=False)
        else:
            xw, xk, xv, xr, xg = self.ddlerp(x, delta)
        d = self.time_decay + torch.tanh(xw @ self.time_decay_w1) @ self.time_decay_w2   # [B, T, A]
        w_log = -torch.exp(d.float()).view(B, T, self.n_head, self.head_size)            # fp32, <= 0
        return self.receptance(xr), self.key(xk), self.value(xv), self.gate(xg), w_log

    def ddlerp(self, x, delta):
        """The data-dependent lerps x + delta * (time_maa_* + LoRA offset) of w, k, v, r, g."""
        B, T, C = x.shape
        # one LoRA produces the five data-dependent lerp offsets
        h = torch.tanh((x + delta * self.time_maa_x) @ self.time_maa_w1)          # [B, T, 5D]
        h = h.view(B * T, 5, -1).transpose(0, 1)                                 # [5, BT, D]
        mw, mk, mv, mr, mg = torch.bmm(h, self.time_maa_w2).view(5, B, T, C).unbind(0)
        return (x + delta * (self.time_maa_w + mw), x + delta * (self.time_maa_k + mk),
                x + delta * (self.time_maa_v + mv), x + delta * (self.time_maa_r + mr),
                x + delta * (self.time_maa_g + mg))


class ChannelMix(nn.Module):
    """Squared-ReLU FFN with token shift. Subclasses name the lerp weights as the checkpoints do."""

    def __init__(self, cfg: RWKVConfig, layer_id: int):
        super().__init__()
        C, Fd = cfg.n_embd, cfg.dim_ffn
        self.key = uninitialised(nn.Linear, C, Fd, bias=False)
        self.receptance = uninitialised(nn.Linear, C, C, bias=False)
        self.value = uninitialised(nn.Linear, Fd, C, bias=False)
        _, r1 = _layer_ratios(layer_id, cfg.n_layer)
        self._init_mix(ddd=(torch.arange(C, dtype=torch.float32) / C).view(1, 1, C) ** r1)

    def forward(self, x, shift, cu_seqlens=None):
        return self.readout(*self.mix(x, token_shift(x, shift, cu_seqlens))), last_positions(x, cu_seqlens)

    def readout(self, xk, xr):
        """sigmoid(receptance(xr)) * value(relu(key(xk))^2)."""
        return torch.sigmoid(self.receptance(xr)) * self.value(torch.relu(self.key(xk)).square())


class ChannelMixEagle(ChannelMix):
    def _init_mix(self, ddd):
        self.time_mix_k = nn.Parameter(ddd.clone())
        self.time_mix_r = nn.Parameter(ddd.clone())

    def mix(self, x, prev):  # weight on the current token
        return torch.lerp(prev, x, self.time_mix_k), torch.lerp(prev, x, self.time_mix_r)


class ChannelMixFinch(ChannelMix):
    def _init_mix(self, ddd):
        self.time_maa_k = nn.Parameter(1 - ddd)
        self.time_maa_r = nn.Parameter(1 - ddd)

    def mix(self, x, prev):  # weight on the previous token
        return torch.lerp(x, prev, self.time_maa_k), torch.lerp(x, prev, self.time_maa_r)


class Block(nn.Module):
    def __init__(self, cfg: RWKVConfig, layer_id: int):
        super().__init__()
        finch = cfg.arch == "finch"
        self.ln1 = nn.LayerNorm(cfg.n_embd)
        self.ln2 = nn.LayerNorm(cfg.n_embd)
        if layer_id == 0:
            self.ln0 = nn.LayerNorm(cfg.n_embd)
        self.att = (TimeMixFinch if finch else TimeMixEagle)(cfg, layer_id)
        self.ffn = (ChannelMixFinch if finch else ChannelMixEagle)(cfg, layer_id)

    def forward(self, x, att_shift, wkv_state, ffn_shift, cu_seqlens=None):
        """x: [B, T, C]; att_shift, ffn_shift: [B, C]; wkv_state: [B, H, N, N] fp32 (packed sequences:
        x [1, T, C] with `cu_seqlens`, the states for each sequence). Returns the new x and states.

        The WKV op is called here, at the block's level: compiled (`compiled_block`), the block is two
        graphs, everything before the op and everything after it."""
        att = self.att
        xa = self.ln1(x)
        r, k, v, g, w_log = att.mix(xa, token_shift(xa, att_shift, cu_seqlens))
        att_shift = last_positions(xa, cu_seqlens)
        # the decay goes in the inputs' dtype, as the official kernel takes it: with bf16 r, k, v the
        # Triton kernels then take their whole-chunk path (an fp32 decay beside bf16 inputs sends every
        # chunk to the slower level kernels)
        y, wkv_state = att.recurrence(r, k, v, w_log.to(r.dtype), wkv_state, cu_seqlens)
        x = x + att.readout(y, g)
        dx, ffn_shift = self.ffn(self.ln2(x), ffn_shift, cu_seqlens)
        return x + dx, att_shift, wkv_state, ffn_shift


def run_block(block, x, att_shift, wkv_state, ffn_shift, cu_seqlens=None):
    """One block as a plain function of the block and its inputs, so that one compiled version of it
    serves every layer (the weights are inputs). The WKV op in the middle is never traced: compiled,
    the block is two graphs (before and after the WKV, each fused by Inductor) around the Triton op."""
    return block(x, att_shift, wkv_state, ffn_shift, cu_seqlens)


@functools.cache
def compiled_block():
    """`run_block` through torch.compile, made once per process (static shapes: a training run has
    one). Its graphs are partitioned with aggressive recomputation: the backward recomputes, inside
    its fused kernels, the elementwise results (and the weights' bf16 copies) that the forward would
    otherwise keep; no matmul is recomputed. Counted on the CPU (bf16 autocast, Finch): a layer keeps
    as much as 21 [B, T, C] bf16 tensors for the backward, against 43 with the default partitioning
    and 54 eagerly (with the ddlerp recomputed in `TimeMixFinch.mix`; without it, 26)."""
    compiled = torch.compile(run_block, dynamic=False)

    def run(block, *args):
        with torch._functorch.config.patch(aggressive_recomputation=True):
            return compiled(block, *args)
    return run


class RWKV(nn.Module):
    """Embedding -> ln0 -> blocks -> ln_out -> head.

    `logits, state = model(idx, state)` for training (whole sequences), prefill (chunks with the
    state carried) and decode (T = 1) alike; `forward_hidden` gives the ln_out output instead of
    logits, and both accept input embeddings in place of ids (for image or music front-ends).
    """

    def __init__(self, cfg: RWKVConfig, progress: bool = False):
        """A model with the official initialisation; `progress` shows a bar when that takes more than
        a moment (a 1.6B model: a minute or more on a CPU, mostly the orthogonal matrices)."""
        super().__init__()
        self.cfg = cfg
        self.emb = uninitialised(nn.Embedding, cfg.vocab_size, cfg.n_embd)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.ln_out = nn.LayerNorm(cfg.n_embd)
        self.head = uninitialised(nn.Linear, cfg.n_embd, cfg.vocab_size, bias=False)
        self.grad_checkpointing = False   # recompute each block in the backward (saves only its inputs)
        self.compiled = False             # run the blocks through `compiled_block()` (training on a GPU)
        self.init_weights(progress)

    @torch.no_grad()
    def init_weights(self, progress: bool = False):
        """Official initialisation of the matrices (rwkv-math.md §2.3); time_* are set by the modules.
        Every nn.Linear and nn.Embedding is set here (they are built without PyTorch's default init)."""
        cfg = self.cfg
        if self.head.weight.is_meta:
            return
        bar = tqdm(total=cfg.n_layer + 1, desc="initialising the model", unit="layer", disable=not progress,
                   delay=PROGRESS_DELAY_S, leave=False, dynamic_ncols=True)
        self.emb.weight.uniform_(-1e-4, 1e-4)
        V, C = cfg.vocab_size, cfg.n_embd
        nn.init.orthogonal_(self.head.weight, gain=0.5 * (V / C) ** 0.5 if V > C else 0.5)
        bar.update(1)
        for i, block in enumerate(self.blocks):
            att, ffn = block.att, block.ffn
            att.ln_x.weight.copy_(torch.full_like(att.ln_x.weight, ((1 + i) / cfg.n_layer) ** 0.7))
            for m in (att.output, ffn.value, ffn.receptance):
                nn.init.zeros_(m.weight)
            for m in (att.key, att.gate):
                nn.init.orthogonal_(m.weight, gain=0.1)
            for m in (att.receptance, att.value, ffn.key):
                nn.init.orthogonal_(m.weight, gain=1.0)
            bar.update(1)
        bar.close()

    def initial_state(self, batch_size: int, device=None) -> RWKVState:
        """The state a fresh sequence starts from (zeros, or the tuned WKV state of state-tuned models)."""
        device = device or self.emb.weight.device
        dtype = self.emb.weight.dtype
        C = self.cfg.n_embd
        shift = torch.zeros(self.cfg.n_layer, batch_size, C, device=device, dtype=dtype)
        wkv_state = torch.stack([b.att.initial_wkv(batch_size, device) for b in self.blocks])
        return RWKVState(shift, wkv_state, shift.clone())

    def forward_hidden(self, idx=None, state=None, *, embeds=None, reverse_span=None, cu_seqlens=None,
                       layer=None):
        """Returns (hidden [B, T, C] after ln_out, new state). Give `idx` [B, T] or `embeds` [B, T, C].

        cu_seqlens: S packed sequences of different lengths in one row (B = 1, no padding): int
        tensor [S + 1] of offsets [0, ..., T], each sequence non-empty; `state` and the new state are
        for the S sequences. Each sequence is computed exactly as if it were run alone.
        reverse_span: (start, end) positions that odd-numbered blocks read backwards (flipped before
        the block, flipped back after): VisualRWKV's bidirectional scan of the image tokens. One
        pair for the whole batch, or a list of one pair per sample.
        layer: runs each block as `layer(block, x, att_shift, wkv, ffn_shift, cu_seqlens)` (the
        inference engine passes a compiled one); default: `compiled_block()` when `self.compiled`,
        else `run_block`. With `self.grad_checkpointing` (and gradients on), each block's layer call is
        recomputed in the backward."""
        if (idx is None) == (embeds is None):
            raise ValueError("give exactly one of idx [B, T] and embeds [B, T, C]")
        x = self.emb(idx) if embeds is None else embeds.to(self.emb.weight.dtype)
        B, T, C = x.shape
        if T == 0:
            raise ValueError("empty input: T must be at least 1")
        S = B
        if cu_seqlens is not None:
            S = check_cu_seqlens(cu_seqlens, B, T)
            if reverse_span is not None:
                raise ValueError("reverse_span and cu_seqlens cannot be combined")
        if state is None:
            state = self.initial_state(S, x.device)
        elif state.batch_size != S:
            raise ValueError(f"state is for batch {state.batch_size}, input has {S} sequences")
        x = self.blocks[0].ln0(x)
        if reverse_span is not None:  # built once per call, used before and after every odd block
            flip_index = reversal_index(reverse_span, B, T, x.device)
        if layer is None:
            layer = compiled_block() if self.compiled else run_block
        att_shift, wkv_state, ffn_shift = [], [], []
        for i, block in enumerate(self.blocks):
            flip = reverse_span is not None and i % 2 == 1
            if flip:
                x = gather_positions(x, flip_index)
            args = (x, state.att_shift[i], state.wkv[i], state.ffn_shift[i], cu_seqlens)
            if self.grad_checkpointing and torch.is_grad_enabled():
                out = torch.utils.checkpoint.checkpoint(layer, block, *args, use_reentrant=False)
            else:
                out = layer(block, *args)
            x = gather_positions(out[0], flip_index) if flip else out[0]
            att_shift.append(out[1]); wkv_state.append(out[2]); ffn_shift.append(out[3])
        new_state = RWKVState(torch.stack(att_shift), torch.stack(wkv_state), torch.stack(ffn_shift))
        return self.ln_out(x), new_state

    def forward(self, idx=None, state=None, *, embeds=None, reverse_span=None, cu_seqlens=None):
        """Returns (logits [B, T, V], new state). The state given is never modified."""
        hidden, state = self.forward_hidden(idx, state, embeds=embeds, reverse_span=reverse_span,
                                            cu_seqlens=cu_seqlens)
        return self.head(hidden), state

    def add_tuned_state(self) -> None:
        """Give every layer a trainable initial WKV state (att.time_state, zeros) if it has none."""
        if not self.cfg.tuned_state:
            self.cfg.tuned_state = True
            w = self.emb.weight
            for block in self.blocks:
                att = block.att
                att.time_state = nn.Parameter(torch.zeros(att.n_head, att.head_size, att.head_size,
                                                          device=w.device, dtype=w.dtype))

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
