"""The generation loop shared by every domain: prefill prompts, then sample with the state carried.

Works on token ids only; stop strings and decoding belong to the domain (see text/generate.py).
"""
import torch
from tqdm import tqdm

from .sampling import Penalties, SamplerConfig, sample_logits
from .state import RWKVState


@torch.no_grad()
def prefill(model, prompts, state=None, chunk_len=1024, progress=False):
    """Feed prompts of different lengths, each with its own state, in chunks of `chunk_len` tokens.

    Args:
        prompts: list of B lists of token ids (each non-empty).
        state: an RWKVState for B sequences to continue from, or None for fresh sequences.
        progress: show a progress bar (tokens read) when the prompts are longer than one chunk.

    Returns:
        (logits of each prompt's last token [B, V] fp32, state after the prompts).
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    if state is not None and state.batch_size != len(prompts):
        raise ValueError(f"state is for {state.batch_size} sequences, got {len(prompts)} prompts")
    device = next(model.parameters()).device
    total = sum(len(p) for p in prompts)
    bar = tqdm(total=total, unit="tok", desc="reading the prompt", disable=not progress or total <= chunk_len,
               dynamic_ncols=True, leave=False)
    last_logits, states = [], []
    for i, prompt in enumerate(prompts):  # one at a time: no padding, so every state is exact
        s = None if state is None else state[i]
        for start in range(0, len(prompt), chunk_len):
            idx = torch.tensor([prompt[start:start + chunk_len]], device=device)
            logits, s = model(idx, s)
            bar.update(idx.shape[1])
        last_logits.append(logits[:, -1].float())
        states.append(s)
    bar.close()
    return torch.cat(last_logits), RWKVState.cat(states)


class Generation:
    """Sample up to `max_new_tokens` for a batch of prompts; iterate to get each step's tokens.

    Each step yields a list with one entry per sequence: the new token id, or None once that
    sequence has finished (it sampled one of `stop_ids`, or the caller called `finish(row)`).
    Every sampled token, the stopping one included, is fed to the model, so `state` (valid
    after iteration) continues each sequence right after its last token: a chat turn can go on
    from it. `tokens[row]` holds what each sequence generated, the stop id excluded.
    A fixed `seed` reproduces the output.

    `prefilled=(logits [B, V], state)` starts from prompts the caller has already fed (for example
    with image embeddings spliced in); `prompts` and `state` are then None. `progress` shows a bar
    while long prompts are read.
    """

    def __init__(self, model, prompts, max_new_tokens, sampler=SamplerConfig(), *, state=None,
                 stop_ids=(), seed=None, uncounted_ids=(), chunk_len=1024, prefilled=None, progress=False):
        self.model, self.sampler, self.max_new_tokens = model, sampler, max_new_tokens
        self.stop_ids = set(stop_ids)
        if prefilled is not None:
            if prompts is not None or state is not None:
                raise ValueError("give either prompts (and a state) or prefilled=(logits, state), not both")
            self.logits, self.state = prefilled[0].float(), prefilled[1]
        else:
            self.logits, self.state = prefill(model, prompts, state, chunk_len, progress)
        B, V = self.logits.shape
        self.tokens = [[] for _ in range(B)]
        self.finished = [False] * B
        self._final_states = [None] * B
        self.penalties = Penalties(sampler, B, V, device=self.logits.device, uncounted_ids=uncounted_ids)
        self.generator = torch.Generator(device=self.logits.device)
        self.generator.manual_seed(seed if seed is not None else torch.seed())

    def finish(self, row):
        """Stop sequence `row` here (its state is kept as it is now)."""
        if not self.finished[row]:
            self.finished[row] = True
            self._final_states[row] = self.state[row]

    @torch.no_grad()
    def __iter__(self):
        device = self.logits.device
        for _ in range(self.max_new_tokens):
            if all(self.finished):
                break
            ids = sample_logits(self.penalties.apply(self.logits), self.sampler, self.generator)
            self.penalties.update(ids)
            logits, self.state = self.model(ids.view(-1, 1).to(device), self.state)
            self.logits = logits[:, -1].float()
            step = []
            for row, token in enumerate(ids.tolist()):
                if self.finished[row]:
                    step.append(None)
                    continue
                if token in self.stop_ids:
                    self.finish(row)
                    step.append(None)
                    continue
                self.tokens[row].append(token)
                step.append(token)
            yield step
        for row in range(len(self.finished)):
            self.finish(row)
        self.state = RWKVState.cat(self._final_states)
