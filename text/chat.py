"""Multi-turn chat in the World models' format ("User: ...\\n\\nAssistant: ..."), the state carried
across turns so no turn re-reads the conversation."""
from .generate import generate_text


class ChatSession:
    """`reply = session.ask("Hello")`; `session.state` continues the conversation (save it with
    `session.state.save(path)`, resume with `ChatSession(..., state=RWKVState.load(path))`)."""

    def __init__(self, model, tokenizer, sampler, *, seed=None, state=None, max_tokens=200, progress=False):
        self.model, self.tokenizer, self.sampler = model, tokenizer, sampler
        self.seed, self.state, self.max_tokens = seed, state, max_tokens
        self.progress = progress  # a bar while a long message is read
        self._mid_turn = False  # the last reply was cut by max_tokens, not ended by "\n\n"

    def ask(self, message, on_text=None) -> str:
        prompt = ("\n\n" if self._mid_turn else "") + f"User: {message}\n\nAssistant:"
        (reply,), self.state = generate_text(self.model, [prompt], self.max_tokens, self.sampler,
                                             tokenizer=self.tokenizer, stop=["\n\n"], seed=self.seed,
                                             state=self.state, on_text=on_text and (lambda _r, t: on_text(t)),
                                             progress=self.progress)
        self._mid_turn = len(self.tokenizer.encode(reply)) >= self.max_tokens
        return reply.strip()
