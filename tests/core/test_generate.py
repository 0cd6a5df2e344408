"""The shared generation loop: batching, stop ids, seeds, and state continuity (chat, save/load)."""
import torch

from eaglefinch.rwkv_core import RWKV, RWKVConfig, RWKVState
from eaglefinch.rwkv_core.generate import Generation
from eaglefinch.rwkv_core.sampling import SamplerConfig

GREEDY = SamplerConfig(temperature=0.0)


def model():
    torch.manual_seed(0)
    m = RWKV(RWKVConfig(arch="finch", n_layer=2, n_embd=32, head_size=16, vocab_size=50, mix_lora_dim=4,
                        decay_lora_dim=8))
    with torch.no_grad():  # the official init zeroes several matrices: make the model say something
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return m.eval()


def test_batched_generation_equals_one_at_a_time_and_seed_reproduces():
    m = model()
    prompts = [[1, 2, 3], [4], [5, 6]]
    sampler = SamplerConfig(temperature=1.0, top_p=0.9)
    a = Generation(m, prompts, 12, sampler, seed=3)
    list(a)
    b = Generation(m, prompts, 12, sampler, seed=3)
    list(b)
    assert a.tokens == b.tokens
    for i, p in enumerate(prompts):   # row i of seed 3 samples what the prompt alone samples with seed 3 + i
        alone = Generation(m, [p], 12, sampler, seed=3 + i)
        list(alone)
        assert alone.tokens[0] == a.tokens[i]
    greedy = Generation(m, prompts, 12, GREEDY)
    list(greedy)
    for i, p in enumerate(prompts):
        one = Generation(m, [p], 12, GREEDY)
        list(one)
        assert one.tokens[0] == greedy.tokens[i]


def test_stop_ids_end_only_their_sequence():
    m = model()
    free = Generation(m, [[1, 2], [3]], 10, GREEDY)
    list(free)
    stop = free.tokens[0][3]
    first = free.tokens[0].index(stop)
    g = Generation(m, [[1, 2], [3]], 10, GREEDY, stop_ids=[stop])
    steps = list(g)
    assert g.tokens[0] == free.tokens[0][:first]
    assert all(s[0] is None for s in steps[first:])
    # the other sequence runs on after the first stopped, until it samples the stop id itself
    second = free.tokens[1].index(stop) if stop in free.tokens[1] else len(free.tokens[1])
    assert second > first
    assert g.tokens[1] == free.tokens[1][:second]


def test_chat_turns_and_saved_state_continue_like_one_pass(tmp_path):
    """Turn 1, then turn 2 from the carried (or saved and reloaded) state == one uninterrupted pass."""
    m = model()
    turn1, turn2 = [1, 2, 3, 4], [5, 6, 7]
    g1 = Generation(m, [turn1], 6, GREEDY)
    list(g1)
    g1.state.save(tmp_path / "chat.safetensors")
    g2 = Generation(m, [turn2], 6, GREEDY, state=g1.state)
    list(g2)
    reloaded = Generation(m, [turn2], 6, GREEDY, state=RWKVState.load(tmp_path / "chat.safetensors"))
    list(reloaded)
    whole = Generation(m, [turn1 + g1.tokens[0] + turn2], 6, GREEDY)
    list(whole)
    assert g2.tokens[0] == whole.tokens[0] == reloaded.tokens[0]
    assert torch.allclose(g2.state.wkv, whole.state.wkv, rtol=1e-5, atol=1e-4)


def test_each_sequence_can_have_its_own_sampler_and_seed():
    m = model()
    prompts = [[1, 2, 3], [1, 2, 3]]
    g = Generation(m, prompts, 10, [GREEDY, SamplerConfig(temperature=1.0)], seed=[5, 5])
    list(g)
    greedy = Generation(m, [prompts[0]], 10, GREEDY)
    list(greedy)
    hot = Generation(m, [prompts[1]], 10, SamplerConfig(temperature=1.0), seed=5)
    list(hot)
    assert g.tokens == [greedy.tokens[0], hot.tokens[0]]


def test_an_abandoned_generation_gives_its_slots_back():
    m = model()
    g = Generation(m, [[1], [2]], 50, GREEDY)
    it = iter(g)
    next(it)
    engine = g.engine
    it.close()
    assert engine.free_slots == engine.max_batch
    assert g.state.batch_size == 2
