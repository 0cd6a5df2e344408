"""longctx's two readings of the same held-out bytes, against the model run directly on each byte's context."""
import numpy as np
import torch
import torch.nn.functional as F

from eaglefinch.research.longctx import long_and_short, spans
from eaglefinch.rwkv_core import RWKV, RWKVConfig
from eaglefinch.rwkv_core.data import TokenStream


def test_long_and_short_give_each_byte_the_context_they_claim():
    torch.manual_seed(0)
    model = RWKV(RWKVConfig(n_layer=1, n_embd=32, vocab_size=50, head_size=16, mix_lora_dim=4, decay_lora_dim=4))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)   # off the initialisation, so that context matters
    tokens = np.random.default_rng(0).integers(0, 50, 200)
    stream = TokenStream([tokens], "random")
    T, length = 4, 16
    long, short = long_and_short(model, stream, T, length, n_windows=2)

    def loss(start, end):   # the loss of target tokens[end] after reading tokens[start:end] from a fresh state
        logits, _ = model(torch.from_numpy(tokens[start:end])[None])
        return F.cross_entropy(logits[0, -1], torch.tensor(tokens[end])).item()

    for i in range(2):
        for p in range(length):
            first = i * length                                     # the window's first byte
            k = p // T
            assert np.isclose(long[i, p].item(), loss(first, first + p + 1), atol=1e-5)
            again = first if k == 0 else first + (k - 1) * T       # short: from T bytes before the span
            assert np.isclose(short[i, p].item(), loss(again, first + p + 1), atol=1e-5)
    assert not torch.allclose(long[:, 2 * T:], short[:, 2 * T:])  # the context matters to this model


def test_spans():
    assert spans(64, 512) == [(32, 64), (64, 128), (128, 256), (256, 512)]
    assert spans(16, 48) == [(8, 16), (16, 32), (32, 48)]
