"""Text generation on top of the shared loop: tokenize, sample, stream decoded text, stop strings."""
import dataclasses

from eaglefinch.rwkv_core.generate import Generation
from eaglefinch.rwkv_core.sampling import SamplerConfig

from .tokenizer import StreamDecoder, WorldTokenizer


def generate_text(model, prompts, max_new_tokens, sampler=SamplerConfig(), *, tokenizer=None, stop=(),
                  stop_ids=(0,), seed=None, state=None, on_text=None, progress=False):
    """Continue each prompt; returns (list of generated texts, state after them).

    Generation of a sequence ends at a token in `stop_ids` (0 = end of text), at the first
    occurrence of a string in `stop` (cut off, not returned), or after `max_new_tokens`.
    `on_text(row, text)` is called with each newly completed piece of text as it is generated;
    text that might be the start of a stop string is held back until that is decided.
    `progress` shows a bar while prompts longer than one chunk (1024 tokens) are read.
    """
    tokenizer = tokenizer or WorldTokenizer()
    ids = [tokenizer.encode(p) for p in prompts]
    V = model.cfg.vocab_size
    for p, toks in zip(prompts, ids):
        if not toks:
            raise ValueError("empty prompt: give at least one character")
        if max(toks) >= V:
            raise ValueError(f"prompt {p[:30]!r} has token id {max(toks)} but the model's vocabulary has "
                             f"{V} entries: was it trained with the World tokenizer?")
    if tokenizer.id_limit < V:  # the padding rows of the head are not tokens: never sample them
        banned = tuple(sampler.banned_tokens) + tuple(range(tokenizer.id_limit, V))
        sampler = dataclasses.replace(sampler, banned_tokens=banned)
    gen = Generation(model, ids, max_new_tokens, sampler, state=state, stop_ids=stop_ids, seed=seed, progress=progress)
    decoders = [StreamDecoder(tokenizer) for _ in prompts]
    texts = [""] * len(prompts)
    emitted = [0] * len(prompts)
    hold = max((len(s) for s in stop), default=1) - 1

    def emit(row, upto):
        if on_text and upto > emitted[row]:
            on_text(row, texts[row][emitted[row]:upto])
        emitted[row] = max(emitted[row], upto)

    for step in gen:
        for row, token in enumerate(step):
            if token is None:
                continue
            texts[row] += decoders[row].feed([token])
            cut = min((i for i in (texts[row].find(s) for s in stop) if i >= 0), default=-1)
            if cut >= 0:
                texts[row] = texts[row][:cut]
                gen.finish(row)
                emit(row, cut)
            else:
                emit(row, len(texts[row]) - hold)
    for row in range(len(prompts)):
        if not any(s in texts[row] for s in stop):
            texts[row] += decoders[row].flush()
        emit(row, len(texts[row]))
    return texts, gen.state
