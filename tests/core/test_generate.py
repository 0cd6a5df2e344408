"""The shared generation loop: batching, stop ids, seeds, and state continuity (chat, save/load)."""
import torch

from eaglefinch.rwkv_core import RWKV, RWKVConfig, RWKVState
from eaglefinch.rwkv_core.generate import Generation, prefill
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


def test_prefill_of_different_lengths_equals_separate_runs():
    m = model()
    prompts = [[1, 2, 3, 4, 5], [7], [9, 8, 7]]
    logits, state = prefill(m, prompts, chunk_len=2)
    for i, p in enumerate(prompts):
        with torch.no_grad():
            ref, ref_state = m(torch.tensor([p]))
        assert torch.allclose(logits[i], ref[0, -1], atol=1e-5)
        assert torch.allclose(state.wkv[:, i], ref_state.wkv[:, 0], rtol=1e-5, atol=1e-4)


def test_batched_generation_equals_one_at_a_time_and_seed_reproduces():
    m = model()
    prompts = [[1, 2, 3], [4], [5, 6]]
    sampler = SamplerConfig(temperature=1.0, top_p=0.9)
    a = Generation(m, prompts, 12, sampler, seed=3)
    list(a)
    b = Generation(m, prompts, 12, sampler, seed=3)
    list(b)
    assert a.tokens == b.tokens
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
