"""The engine against its slow obvious twin, `model(idx, state)` token by token: greedy tokens and
logits for sequences of different lengths that join and leave a running batch, in fp32 on the CPU."""
import pytest
import torch

from .test_model import random_model
from eaglefinch.rwkv_core.engine import Engine, batch_buckets


def reference_greedy(model, prompt, steps, device="cpu"):
    """Greedy continuation of one prompt, the plain model token by token: (tokens, logits of each step)."""
    with torch.no_grad():
        logits, state = model(torch.tensor([prompt], device=device))
        logits = logits[0, -1]
        tokens, seen = [], []
        for _ in range(steps):
            seen.append(logits)
            token = int(logits.argmax())
            tokens.append(token)
            logits, state = model(torch.tensor([[token]], device=device), state)
            logits = logits[0, -1]
    return tokens, torch.stack(seen)


def check_joining_batch(model, make_engine, rtol=1e-4, atol=1e-4):
    """Four prompts of different lengths join a running batch at different steps and leave after
    different numbers of tokens (one frees a slot that a later one reuses); each one's greedy tokens
    must equal the plain model's, and its logits agree within rtol/atol. `make_engine(model, max_batch)`."""
    device = model.emb.weight.device
    g = torch.Generator().manual_seed(0)
    V = model.cfg.vocab_size
    prompts = [torch.randint(0, V, (n,), generator=g).tolist() for n in (5, 1, 23, 9)]
    joins = [0, 0, 3, 40]        # the step at which each sequence joins the running batch
    steps = [256, 30, 120, 150]  # how many tokens each generates before it leaves (1 frees a slot for 3)
    engine = make_engine(model, 3)
    running = {}  # sequence -> (slot, next-token logits)
    got = {i: ([], []) for i in range(len(prompts))}
    for step in range(max(j + s for j, s in zip(joins, steps))):
        joining = [i for i, j in enumerate(joins) if j == step]
        for i in [i for i in running if len(got[i][0]) == steps[i]]:
            engine.release([running.pop(i)[0]])
        if joining:
            slots = engine.allocate(len(joining))
            logits = engine.prefill(slots, [prompts[i] for i in joining])
            for i, slot, row in zip(joining, slots, logits):
                running[i] = (slot, row)
        if not running:
            continue
        order = list(running)
        logits = torch.stack([running[i][1] for i in order])
        ids = logits.argmax(-1)
        for i, row, token in zip(order, logits, ids.tolist()):
            got[i][0].append(token)
            got[i][1].append(row)
        new = engine.decode([running[i][0] for i in order], ids)
        for i, row in zip(order, new):
            running[i] = (running[i][0], row)
    for i, prompt in enumerate(prompts):
        tokens, logits = reference_greedy(model, prompt, steps[i], device)
        assert got[i][0] == tokens, f"sequence {i} diverged"
        assert torch.allclose(torch.stack(got[i][1]).float(), logits.float(), rtol=rtol, atol=atol)


@pytest.mark.parametrize("arch,tuned", [("eagle", False), ("finch", False), ("finch", True)])
def test_engine_greedy_equals_plain_model_for_256_steps(arch, tuned):
    model = random_model(arch, seed=1, tuned=tuned)
    # prefill_tokens=16: long prompts are split across packed forwards
    check_joining_batch(model, lambda m, n: Engine(m, max_batch=n, prefill_tokens=16))


@pytest.mark.slow
def test_compiled_engine_equals_plain_model():
    """The GPU's compiled layer steps (prefill and decode, torch.compile; here its CPU backend) give
    the plain model's tokens too; CUDA graphs are tested in tests/gpu."""
    model = random_model("finch", seed=2)
    check_joining_batch(model, lambda m, n: Engine(m, max_batch=n, prefill_tokens=16, compile=True))


def test_prefill_packs_and_splits_prompts_exactly_and_states_round_trip():
    model = random_model("finch", seed=2)
    prompts = [[1, 2, 3, 4, 5, 6, 7], [8], [9, 10, 11]]
    engine = Engine(model, max_batch=4, prefill_tokens=4)
    slots = engine.allocate(3)
    logits = engine.prefill(slots, prompts)
    for i, p in enumerate(prompts):
        with torch.no_grad():
            ref, ref_state = model(torch.tensor([p]))
        assert torch.allclose(logits[i], ref[0, -1], rtol=1e-5, atol=1e-5)
        state = engine.read_state([slots[i]])
        assert torch.allclose(state.wkv, ref_state.wkv, rtol=1e-5, atol=1e-5)
        assert torch.allclose(state.att_shift, ref_state.att_shift, rtol=1e-5, atol=1e-5)
    # a state written into another slot continues exactly like the original (fork)
    fork = engine.allocate(1, engine.read_state([slots[0]]))
    a = engine.decode([slots[0], fork[0]], [3, 3])
    assert torch.equal(a[0], a[1])


def test_a_sequence_does_not_depend_on_its_batch_companions():
    model = random_model("eagle", seed=3)
    engine = Engine(model, max_batch=4)
    alone = engine.allocate(1)
    engine.prefill(alone, [[4, 5, 6]])
    solo = engine.decode(alone, [7])
    engine.release(alone)
    slots = engine.allocate(3)
    engine.prefill(slots, [[1], [4, 5, 6], [2, 2, 2, 2]])
    batch = engine.decode([slots[2], slots[1], slots[0]], [9, 7, 8])
    assert torch.allclose(batch[1], solo[0], rtol=1e-5, atol=1e-5)


def test_slot_bookkeeping_errors():
    model = random_model("finch")
    engine = Engine(model, max_batch=2)
    slots = engine.allocate(2)
    with pytest.raises(RuntimeError, match="holds 2 sequences"):
        engine.allocate(1)
    with pytest.raises(ValueError, match="distinct"):
        engine.decode([slots[0], slots[0]], [1, 2])
    with pytest.raises(ValueError, match="2 token ids for 1 slots"):
        engine.decode([slots[0]], [1, 2])
    engine.release([slots[1]])
    with pytest.raises(ValueError, match="not allocated"):
        engine.decode([slots[1]], [1])
    with pytest.raises(ValueError, match="not in use"):
        engine.release([slots[1]])
    with pytest.raises(ValueError, match="distinct"):   # a slot given back twice at once
        engine.release([slots[0], slots[0]])
    assert engine.free_slots == 1
    with pytest.raises(ValueError, match="at least one token"):
        engine.prefill([slots[0]], [[]])


def test_buckets_cover_every_batch_size_with_little_padding():
    for max_batch in (1, 3, 16, 17, 64, 100, 256):
        buckets = batch_buckets(max_batch)
        assert buckets[-1] == max_batch and buckets == sorted(set(buckets))
        for n in range(1, max_batch + 1):
            assert next(b for b in buckets if b >= n) - n <= 15


def test_packed_forward_equals_separate_forwards():
    """The model's own packed path (cu_seqlens), which prefill uses, against one forward per sequence."""
    model = random_model("finch", seed=4)
    seqs = [[1, 2, 3], [4], [5, 6, 7, 8, 9]]
    state = model.initial_state(3)
    with torch.no_grad():
        state = model(torch.tensor([[11], [12], [13]]), state)[1]   # a non-trivial starting state
        cu = torch.tensor([0, 3, 4, 9])
        packed, new = model(torch.tensor([sum(seqs, [])]), state, cu_seqlens=cu)
        for i, s in enumerate(seqs):
            ref, ref_state = model(torch.tensor([s]), state[i])
            assert torch.allclose(packed[0, cu[i]:cu[i + 1]], ref[0], rtol=1e-5, atol=1e-5)
            assert torch.allclose(new.wkv[:, i], ref_state.wkv[:, 0], rtol=1e-5, atol=1e-5)
            assert torch.allclose(new.ffn_shift[:, i], ref_state.ffn_shift[:, 0], rtol=1e-5, atol=1e-5)
        with pytest.raises(ValueError, match="non-empty"):
            model(torch.tensor([[1, 2]]), model.initial_state(2), cu_seqlens=torch.tensor([0, 0, 2]))


def test_prefill_embeds_reads_rows_of_embeddings_as_the_model_does():
    """Prompts given as embeddings (a visual model's), rows split across forwards, a reversed span for
    every row or one per row, each continuing from its slot's state."""
    model = random_model("finch", seed=5)
    embeds = torch.randn(3, 6, model.cfg.n_embd, generator=torch.Generator().manual_seed(0))
    engine = Engine(model, max_batch=4, prefill_tokens=12)   # two rows of 6 per forward: 3 rows in 2
    for span in ((1, 5), [(1, 5), (0, 0), (2, 6)]):
        slots = engine.allocate(3)
        engine.prefill(slots, [[7], [8, 9], [10]])   # a state to continue from
        start = engine.read_state(slots)
        logits = engine.prefill_embeds(slots, embeds, span)
        with torch.no_grad():
            ref, ref_state = model(embeds=embeds, state=start, reverse_span=span)
            one_way = model(embeds=embeds, state=start)[0]
        torch.testing.assert_close(logits, ref[:, -1], rtol=1e-5, atol=1e-5)
        assert not torch.allclose(logits, one_way[:, -1], atol=1e-3)   # the span was reversed
        state = engine.read_state(slots)
        for ours, want in zip(state.tensors, ref_state.tensors):
            torch.testing.assert_close(ours, want, rtol=1e-5, atol=1e-5)
        engine.release(slots)
