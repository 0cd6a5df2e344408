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
    if tokenizer.id_limit < V:
        sampler = dataclasses.replace(sampler, banned_tokens=tuple(sampler.banned_tokens) + padding_ids(tokenizer, V))
    gen = Generation(model, ids, max_new_tokens, sampler, state=state, stop_ids=stop_ids, seed=seed, progress=progress)
    streams = [TextStream(tokenizer, stop) for _ in prompts]
    for step in gen:
        for row, token in enumerate(step):
            if token is None:
                continue
            piece = streams[row].feed(token)
            if streams[row].stopped:
                gen.finish(row)
            if piece and on_text:
                on_text(row, piece)
    for row, stream in enumerate(streams):
        piece = stream.finish()
        if piece and on_text:
            on_text(row, piece)
    return [stream.text for stream in streams], gen.state


def padding_ids(tokenizer, vocab_size) -> tuple:
    """The model's output rows beyond the tokenizer's ids: padding, not tokens, never to be sampled."""
    return tuple(range(tokenizer.id_limit, vocab_size))


class TextStream:
    """One sequence's token ids in, its text out as it can be shown: characters completed across
    tokens (UTF-8), the text cut at the first stop string (which is never shown), and text that
    might be the start of a stop string held back until that is decided."""

    def __init__(self, tokenizer, stop=()):
        self.decoder = StreamDecoder(tokenizer)
        self.stop = [s for s in stop if s]
        self.hold = max((len(s) for s in self.stop), default=1) - 1
        self.text = ""        # everything so far (after a stop: up to it)
        self.stopped = False  # a stop string appeared
        self._shown = 0

    def feed(self, token) -> str:
        """The new text that may be shown now (often ""); sets `stopped` at a stop string."""
        self.text += self.decoder.feed([token])
        cut = min((i for i in (self.text.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            self.text, self.stopped = self.text[:cut], True
            return self._show(cut)
        return self._show(len(self.text) - self.hold)

    def finish(self) -> str:
        """The text still held back, at the sequence's end."""
        if not self.stopped:
            self.text += self.decoder.flush()
        return self._show(len(self.text))

    def _show(self, upto):
        piece = self.text[self._shown:upto] if upto > self._shown else ""
        self._shown = max(self._shown, upto)
        return piece
