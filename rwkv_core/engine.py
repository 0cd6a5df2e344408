"""The inference engine: many sequences at once, each in a slot of a preallocated state pool.

    engine = Engine(model, max_batch=64)
    slots = engine.allocate(2)                      # fresh sequences (the model's initial state)
    logits = engine.prefill(slots, [prompt_a, prompt_b])   # packed, no padding: [2, V] fp32
    logits = engine.decode(slots, next_ids)        # one token per slot, states updated in place
    state = engine.read_state(slots)               # an RWKVState copy: save, fork, cache
    engine.release(slots)

It knows token ids, embeddings and states only; sampling, stop rules and text belong to the caller
(`rwkv_core.generate.Generation` is the loop every domain uses).

Decode runs one token of each given slot through every layer: the model's own mixing and readout
modules (so there is one definition of the math), the in-place WKV decode kernel on the pool's slots,
and the shift states written in place. On CUDA the layer step is compiled (torch.compile fuses the
small per-token operations) and the whole step is captured as a CUDA graph per batch-size bucket, so
a step costs one launch. On the CPU the same step runs eagerly. Its slow obvious twin is
`model(idx, state)` token by token (tests/core/test_engine.py).
"""
import torch
from tqdm import tqdm

from eaglefinch.kernels import device_offsets, to_device, wkv_decode_

from .model import last_positions, run_block
from .state import RWKVState


class StatePool:
    """Recurrent states of `size` sequences, preallocated on one device: one slot per sequence.

    att_shift, ffn_shift: [L, size, C] in the model's dtype; wkv: [L, size, H, N, N] fp32.
    Slots are updated in place by the engine; `read` and `write` copy to and from an RWKVState.
    """

    def __init__(self, model, size: int):
        self.model = model
        self.att_shift, self.wkv, self.ffn_shift = (t.contiguous() for t in model.initial_state(size).tensors)

    @property
    def size(self) -> int:
        return self.wkv.shape[1]

    def bytes_per_slot(self) -> int:
        return sum(t[:, 0].numel() * t.element_size() for t in self.tensors)

    @property
    def tensors(self) -> tuple:
        """(att_shift, wkv, ffn_shift), in the order of `RWKVState.tensors`."""
        return self.att_shift, self.wkv, self.ffn_shift

    def read(self, slots) -> RWKVState:
        index = self._index(slots)
        return RWKVState(*(pool[:, index] for pool in self.tensors))

    def write(self, slots, state: RWKVState) -> None:
        index = self._index(slots)
        if state.batch_size != len(index):
            raise ValueError(f"state is for {state.batch_size} sequences, got {len(index)} slots")
        for pool, part in zip(self.tensors, state.tensors):
            if pool[:, 0].shape != part[:, 0].shape:
                raise ValueError(f"state shape {tuple(part.shape)} does not fit this model's pool "
                                 f"{tuple(pool.shape)}")
            pool.index_copy_(1, index, part.to(pool.device, pool.dtype))

    def reset(self, slots) -> None:
        """Start these slots over from the model's initial state (zeros, or the tuned state)."""
        self.write(slots, self.model.initial_state(len(slots), self.wkv.device))

    def _index(self, slots):
        return to_device(slots, self.wkv.device, torch.long).view(-1)


def batch_buckets(max_batch: int) -> list[int]:
    """The batch sizes that get a CUDA graph: 1, 2, 4, 8, 16, then multiples of 16, then max_batch.
    A step of n sequences runs in the smallest bucket >= n, padded with scratch slots."""
    buckets = [b for b in (1, 2, 4, 8) if b < max_batch]
    buckets += list(range(16, max_batch, 16))
    return buckets + [max_batch]


def decode_layer(block, x, att_shift, wkv_state, ffn_shift, slots):
    """One token of each sequence through one block, its states updated in place.

    x: [B, C] residual stream; att_shift, ffn_shift: [slots, C] and wkv_state: [slots, H, N, N] of
    this layer in the pool; slots: [B] distinct int64 slot of each sequence. Returns the new x."""
    att, ffn = block.att, block.ffn
    B = x.shape[0]
    H, N = att.n_head, att.head_size
    xa = block.ln1(x)
    r, k, v, g, w_log = att.mix(xa[:, None], att_shift[slots][:, None])
    att_shift.index_copy_(0, slots, xa)
    if w_log.dim() == 4:  # Finch: per token; Eagle: static [H, N]
        w_log = w_log.view(B, 1, H, N)
    y = wkv_decode_(r.view(B, 1, H, N), k.view(B, 1, H, N), v.view(B, 1, H, N), w_log,
                    att.time_faaaa.float(), wkv_state, slots)
    x = x + att.readout(y, g)[:, 0]
    xf = block.ln2(x)
    xk, xr = ffn.mix(xf[:, None], ffn_shift[slots][:, None])
    ffn_shift.index_copy_(0, slots, xf)
    return x + ffn.readout(xk, xr)[:, 0]


class Engine:
    """Prefill and decode for up to `max_batch` sequences of one model, states kept on its device.

    Args:
        model: an RWKV model (its weights' dtype and device are the engine's: bf16 or fp16 on a GPU,
            fp32 on the CPU).
        max_batch: sequences held at once (slots). Each costs `pool.bytes_per_slot()` of memory
            (Finch-1.6B: 12.8 MB).
        cuda_graphs: capture the decode step as CUDA graphs (default: on CUDA).
        compile: torch.compile the layer step (default: on CUDA).
        prefill_tokens: tokens per prefill forward (prompts are packed, and long ones split, so a
            chunk never holds more); bounds the activation memory of prefill. Default: 4096 on
            CUDA, 1024 on the CPU (where larger forwards gain nothing).
    """

    def __init__(self, model, max_batch: int = 16, *, cuda_graphs=None, compile=None, prefill_tokens=None):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.model = model
        self.device = model.emb.weight.device
        on_cuda = self.device.type == "cuda"
        self.cuda_graphs = on_cuda if cuda_graphs is None else cuda_graphs
        self.compile = on_cuda if compile is None else compile
        self.max_batch = max_batch
        self.prefill_tokens = prefill_tokens or (4096 if on_cuda else 1024)
        self.buckets = batch_buckets(max_batch)
        # scratch slots pad a step up to its bucket; they are never handed out
        n_scratch = max(b - a - 1 for a, b in zip([0] + self.buckets, self.buckets))
        self.scratch = list(range(max_batch, max_batch + n_scratch))
        self.pool = StatePool(model, max_batch + n_scratch)
        self._in_use = set()
        # one compiled version of each layer function serves every layer (the weights are inputs)
        self._decode_layer = torch.compile(decode_layer) if self.compile else decode_layer
        self._prefill_layer = torch.compile(run_block, dynamic=True) if self.compile else run_block
        self._graphs = {}
        if self.cuda_graphs:
            self._capture_graphs()

    # ---- slots -------------------------------------------------------------------------------
    @property
    def free_slots(self) -> int:
        return self.max_batch - len(self._in_use)

    def allocate(self, n: int = 1, state: RWKVState | None = None) -> list[int]:
        """Take n free slots (the lowest), set to the model's initial state (or to `state`, for n sequences)."""
        if n > self.free_slots:
            raise RuntimeError(f"the engine holds {self.max_batch} sequences and {len(self._in_use)} "
                               f"are in use: cannot add {n} (make the engine with a larger max_batch)")
        slots = [s for s in range(self.max_batch) if s not in self._in_use][:n]
        self._in_use.update(slots)
        if state is None:
            self.pool.reset(slots)
        else:
            self.pool.write(slots, state)
        return slots

    def release(self, slots) -> None:
        """Give slots back (their states are dropped)."""
        self._check_slots(slots)
        self._in_use.difference_update(slots)

    def read_state(self, slots) -> RWKVState:
        """A copy of the slots' states (to save, fork or cache a sequence)."""
        return self.pool.read(slots)

    def write_state(self, slots, state: RWKVState) -> None:
        """Set the slots' states (continue a saved or forked sequence)."""
        self.pool.write(slots, state)

    # ---- prefill -----------------------------------------------------------------------------
    @torch.no_grad()
    def prefill(self, slots, prompts, progress=False) -> torch.Tensor:
        """Feed each slot its prompt (continuing from the slot's state); returns each prompt's last
        logits [n, V] fp32. Prompts are packed without padding into forwards of at most
        `prefill_tokens` tokens; a longer prompt is split across forwards with its state carried."""
        if len(slots) != len(prompts):
            raise ValueError(f"{len(slots)} slots for {len(prompts)} prompts")
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token")
        self._check_slots(slots)
        pos = [0] * len(prompts)
        last_hidden = [None] * len(prompts)
        total = sum(len(p) for p in prompts)
        bar = tqdm(total=total, unit="tok", desc="reading the prompt", disable=not progress or total <= self.prefill_tokens,
                   dynamic_ncols=True, leave=False)
        while any(pos[i] < len(p) for i, p in enumerate(prompts)):
            rows, pieces, budget = [], [], self.prefill_tokens
            for i, p in enumerate(prompts):
                if pos[i] < len(p) and budget > 0:
                    piece = p[pos[i]:pos[i] + budget]
                    rows.append(i)
                    pieces.append(piece)
                    budget -= len(piece)
            hidden = self._prefill_packed([slots[i] for i in rows], pieces)
            for j, i in enumerate(rows):
                pos[i] += len(pieces[j])
                if pos[i] == len(prompts[i]):
                    last_hidden[i] = hidden[j]
            bar.update(sum(len(p) for p in pieces))
        bar.close()
        return self.model.head(torch.stack(last_hidden)).float()

    @torch.no_grad()
    def prefill_embeds(self, slots, embeds, reverse_span=None) -> torch.Tensor:
        """Feed each slot a prompt of input embeddings instead of token ids (a visual model's text
        with image tokens spliced in), continuing from the slot's state; returns each prompt's last
        logits [n, V] fp32.

        embeds: [n, T, C], prompts of one length (rows of a batch, not packed: the reversed span of a
        bidirectional scan is positions of the row). reverse_span: as the model's forward takes it, one
        (start, end) for every row or a list of n. Rows go through in forwards of at most
        `prefill_tokens` tokens (at least one row each); a row is never split."""
        if len(slots) != embeds.shape[0]:
            raise ValueError(f"{len(slots)} slots for {embeds.shape[0]} prompts")
        self._check_slots(slots)
        rows = max(1, self.prefill_tokens // embeds.shape[1])
        per_row = reverse_span is not None and not isinstance(reverse_span[0], int)
        last = []
        for a in range(0, len(slots), rows):
            span = reverse_span[a:a + rows] if per_row else reverse_span
            last.append(self._forward(slots[a:a + rows], embeds=embeds[a:a + rows], reverse_span=span)[:, -1])
        return self.model.head(torch.cat(last)).float()

    def _prefill_packed(self, slots, pieces):
        """One packed forward of the pieces, from and back into the slots; the last hidden of each [S, C]."""
        # made on the host and copied without a sync: the forward's host work overlaps the GPU's
        cu_seqlens = device_offsets([len(p) for p in pieces], self.device)
        idx = to_device([t for p in pieces for t in p], self.device)[None]
        return last_positions(self._forward(slots, idx=idx, cu_seqlens=cu_seqlens), cu_seqlens)

    def _forward(self, slots, **inputs):
        """The model's forward from the slots' states and back into them (the compiled layer step);
        `inputs` as forward_hidden takes them. Returns the hidden states."""
        hidden, state = self.model.forward_hidden(state=self.pool.read(slots), layer=self._prefill_layer, **inputs)
        self.pool.write(slots, state)
        return hidden

    # ---- decode ------------------------------------------------------------------------------
    @torch.no_grad()
    def decode(self, slots, ids) -> torch.Tensor:
        """Feed one token to each slot (states advance in place); returns next-token logits [n, V] fp32.

        slots: distinct slots in use; ids: [n] int tensor on any device, or a list of ints."""
        n = len(slots)
        if n == 0:
            raise ValueError("decode needs at least one slot")
        self._check_slots(slots)
        ids = to_device(ids, self.device, torch.long).view(-1)
        if ids.numel() != n:
            raise ValueError(f"{ids.numel()} token ids for {n} slots")
        bucket = next(b for b in self.buckets if b >= n)
        if not self._graphs:  # eager (CPU, or graphs off): no padding needed
            return self._step(ids, to_device(slots, self.device)).float()
        graph, static_ids, static_slots, static_logits = self._graphs[bucket]
        static_ids[:n].copy_(ids)
        static_ids[n:].zero_()
        static_slots.copy_(to_device(list(slots) + self.scratch[:bucket - n], self.device))
        graph.replay()
        return static_logits[:n].clone()

    def _step(self, ids, slots):
        """Logits [B, V] (fp32) after one token of each slot; the states advance in place."""
        model, pool = self.model, self.pool
        x = model.blocks[0].ln0(model.emb(ids))
        for i, block in enumerate(model.blocks):
            x = self._decode_layer(block, x, pool.att_shift[i], pool.wkv[i], pool.ffn_shift[i], slots)
        return model.head(model.ln_out(x)).float()

    def _capture_graphs(self):
        """Compile (once) and capture one CUDA graph per bucket. Runs while the pool is unused: the
        warm-up steps write to slots that `allocate` resets before handing them out."""
        for bucket in self.buckets:
            ids = torch.zeros(bucket, dtype=torch.long, device=self.device)
            slots = torch.arange(bucket, device=self.device)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side), torch.no_grad():
                for _ in range(2):
                    self._step(ids, slots)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph), torch.no_grad():
                logits = self._step(ids, slots)
            self._graphs[bucket] = (graph, ids, slots, logits)

    def _check_slots(self, slots):
        if len(set(slots)) != len(slots):
            raise ValueError(f"slots must be distinct, got {list(slots)}")
        for s in slots:
            if s not in self._in_use:
                raise ValueError(f"slot {s} is not in use (not allocated, or released)")
