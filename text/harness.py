"""Eagle and Finch in EleutherAI's lm-evaluation-harness (`lm-eval`): the `eaglefinch` model.

    python -m eaglefinch.text.harness --model eaglefinch --model_args checkpoint=RUN_OR_PTH --tasks lambada_openai

    import lm_eval, eaglefinch.text.harness      # importing this module registers "eaglefinch"
    lm_eval.simple_evaluate(model="eaglefinch", model_args={"checkpoint": "runs/text"}, tasks=["lambada_openai"])

lm-eval (0.4.13) looks models up in its own table and has no plugin mechanism, so its `lm_eval` command
cannot see a model registered by another package. `python -m eaglefinch.text.harness` is lm-eval's
own command line (every argument is lm-eval's) run after this module has registered the model.

model_args: checkpoint (a text run folder, its model.safetensors, or an official .pth: World
tokenizer), dtype (fp32 | bf16 | fp16, also float32 ...; default bf16 on a GPU, fp32 on the CPU),
device (default cuda when there is one), adapters and state (LoRA adapters, tuned state: as
`eaglefinch text generate` takes them), forward_tokens (tokens per packed forward: bounds activation
memory), max_gen_toks (default 256), seed (of sampled generations). lm-eval's --batch_size is the
number of sequences read at once.

How requests run (a recurrent model needs no padding and no sliding windows):
- loglikelihood: requests are grouped by context tokens. All of a context but its last token is read
  once, packed with the other contexts of the batch; every continuation of it then starts from a copy
  of that state, reading the context's last token (its logits predict the continuation's first
  token) and the continuation. The answer is the continuation's summed log-probability and whether
  each of its tokens was the most likely one.
- loglikelihood_rolling: the document after the end-of-text token 0, read whole with the state
  carried from forward to forward: every token is predicted from everything before it.
- generate_until: `text.generate.generate_text` (the project's generation loop), greedy unless the
  task asks to sample, stopping at the `until` strings, at token 0 or after max_gen_toks tokens.

Tokenization is lm-eval's, as its `TemplateLM` (and so HFLM) does it: trailing spaces of the context
move to the continuation, then context + continuation is encoded whole and split after the
context's own tokens; an empty context becomes the end-of-text token 0. One exception: the World
tokenizer's greedy longest match can make a token cross the boundary (context "Hel", continuation
"lo": "Hello" is one token), and the split would then score tokens that do not spell the
continuation; such a pair is encoded as two separate pieces instead.
"""
import json

import torch
from tqdm import tqdm

try:
    import lm_eval.models  # noqa: F401  lm-eval's own models first: it fills only an empty registry itself
    from lm_eval.api.model import TemplateLM
    from lm_eval.api.registry import model_registry
    from lm_eval.models.utils import normalize_gen_kwargs
except ImportError as e:
    raise ImportError(f"the lm-evaluation-harness model needs lm-eval ({e}): pip install 'eaglefinch[lm-eval]'") from None

from eaglefinch.rwkv_core.heldout import target_logprobs
from eaglefinch.rwkv_core.sampling import SamplerConfig

from .generate import generate_text
from .run import TextRun

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16}
SAMPLING_OPTIONS = ("do_sample", "temperature", "top_p", "top_k")


@torch.no_grad()
def read_sequences(model, sequences, state, forward_tokens, targets=None):
    """Feed sequence i its tokens from row i of `state` (an RWKVState of len(sequences) rows).

    Sequences are packed without padding into forwards of at most `forward_tokens` tokens; a longer
    one is split across forwards, its state carried. An empty sequence keeps its state.
    With `targets` (one list per sequence, as long as it: the token each position predicts), also
    scores them. Returns (state after each sequence, summed log-probability of each sequence's targets
    [S] fp64 (0 for none), whether every target was the most likely token [S] bool); the last two
    are None without targets.
    """
    S, device = len(sequences), state.device
    state, pos = state.clone(), [0] * S
    logprob, misses = torch.zeros(S, dtype=torch.float64), torch.zeros(S, dtype=torch.long)
    todo = [i for i in range(S) if sequences[i]]
    while todo:
        rows, starts, pieces, budget = [], [], [], forward_tokens
        for i in todo:
            if budget == 0:
                break
            piece = sequences[i][pos[i]:pos[i] + budget]
            rows.append(i); starts.append(pos[i]); pieces.append(piece)
            budget -= len(piece)
        lengths = torch.tensor([len(p) for p in pieces])
        cu_seqlens = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)]).to(device)
        idx = torch.tensor([t for p in pieces for t in p], device=device)[None]
        index = torch.tensor(rows, device=device)
        hidden, new = model.forward_hidden(idx, state[index], cu_seqlens=cu_seqlens)
        for mine, part in zip(state.tensors, new.tensors):
            mine[:, index] = part
        if targets is not None:
            wanted = torch.tensor([t for i, a, p in zip(rows, starts, pieces) for t in targets[i][a:a + len(p)]],
                                  device=device)
            token_logprob, best = target_logprobs(model, hidden[0], wanted, with_argmax=True)
            owner = torch.repeat_interleave(torch.tensor(rows), lengths)
            logprob.index_add_(0, owner, token_logprob.double().cpu())
            misses.index_add_(0, owner, (~best).long().cpu())
        for i, p in zip(rows, pieces):
            pos[i] += len(p)
        todo = [i for i in todo if pos[i] < len(sequences[i])]
    if targets is None:
        return state, None, None
    return state, logprob, misses == 0


def sampler_for(gen_kwargs: dict) -> SamplerConfig:
    """The SamplerConfig of lm-eval's normalised generation options: greedy unless do_sample."""
    unknown = sorted(set(gen_kwargs) - set(SAMPLING_OPTIONS))
    if unknown:
        raise ValueError(f"generation options the eaglefinch model does not support: {', '.join(unknown)} "
                         f"(supported: until, max_gen_toks, {', '.join(SAMPLING_OPTIONS)})")
    if not gen_kwargs.get("do_sample"):
        return SamplerConfig(temperature=0.0)
    given = {name: value for name, value in gen_kwargs.items() if value is not None}
    return SamplerConfig(temperature=float(given.get("temperature", 1.0)), top_p=float(given.get("top_p", 1.0)),
                         top_k=int(given.get("top_k", 0)))


class EagleFinchLM(TemplateLM):
    """An Eagle or Finch text model as an lm-eval model (see the module docstring)."""

    def __init__(self, checkpoint, dtype=None, device=None, batch_size=1, adapters=None, state=None,
                 forward_tokens=None, max_gen_toks=256, seed=0):
        super().__init__()
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = dtype or ("bf16" if str(device).startswith("cuda") else "fp32")
        if dtype not in DTYPES:
            raise ValueError(f"dtype {dtype!r}: give one of {', '.join(DTYPES)}")
        if str(batch_size).startswith("auto"):
            raise ValueError("batch_size auto is not supported: give a number of sequences to read at once "
                             "(each forward also holds at most forward_tokens tokens)")
        self.batch_size = int(batch_size)
        self.forward_tokens = int(forward_tokens or (4096 if str(device).startswith("cuda") else 1024))
        self._max_gen_toks, self.seed = int(max_gen_toks), int(seed)
        if min(self.batch_size, self.forward_tokens, self._max_gen_toks) < 1:
            raise ValueError("batch_size, forward_tokens and max_gen_toks must be at least 1")
        self.model, self.tokenizer = TextRun.open(checkpoint).load(DTYPES[dtype], device, state=state,
                                                                   adapters=adapters)
        self._device = self.model.emb.weight.device

    # -- what lm-eval asks of a TemplateLM ----------------------------------------------------------

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eot_id

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    def tok_encode(self, string: str, add_special_tokens=None, **kwargs) -> list[int]:
        return self.tokenizer.encode(string)   # the World tokenizer adds no special tokens

    def tok_decode(self, tokens, **kwargs) -> str:
        return self.tokenizer.decode(tokens)

    def _encode_pair(self, context: str, continuation: str):
        """lm-eval's split (TemplateLM._encode_pair); when a token crosses the boundary, the two
        pieces encoded separately, so the continuation's tokens always spell it."""
        context_enc, continuation_enc = super()._encode_pair(context, continuation)
        context_enc = context_enc or [self.prefix_token_id]   # a context of spaces only
        if self.tokenizer.decode_bytes(continuation_enc) != (context + continuation)[len(context.rstrip()):].encode():
            continuation_enc = self.tok_encode(context[len(context.rstrip()):] + continuation)
        return context_enc, continuation_enc

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs):
        """requests: ((context, continuation) or None, context tokens, continuation tokens) ->
        (summed log-probability of the continuation, whether it is the greedy continuation)."""
        groups = {}   # context tokens -> the requests that share them
        for i, (_, context_enc, _) in enumerate(requests):
            groups.setdefault(tuple(context_enc), []).append(i)
        contexts, results = list(groups), [None] * len(requests)
        bar = tqdm(total=len(requests), desc="eaglefinch loglikelihood", disable=disable_tqdm)
        for b in range(0, len(contexts), self.batch_size):
            batch = contexts[b:b + self.batch_size]
            # each context once, but for its last token: that one starts every continuation's scoring
            shared, _, _ = read_sequences(self.model, [list(c[:-1]) for c in batch],
                                          self.model.initial_state(len(batch)), self.forward_tokens)
            members = [(j, i) for j, c in enumerate(batch) for i in groups[c]]
            for m in range(0, len(members), self.batch_size):
                part = members[m:m + self.batch_size]
                targets = [list(requests[i][2]) for _, i in part]
                inputs = [([batch[j][-1]] + t)[:len(t)] for (j, _), t in zip(part, targets)]
                _, logprob, greedy = read_sequences(self.model, inputs, shared[[j for j, _ in part]],
                                                    self.forward_tokens, targets)
                for (_, i), lp, g in zip(part, logprob.tolist(), greedy.tolist()):
                    results[i] = (lp, g)
                    if requests[i][0] is not None:
                        self.cache_hook.add_partial("loglikelihood", requests[i][0], results[i])
                bar.update(len(part))
        bar.close()
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Each document's log-probability after the end-of-text token, read whole (no windows)."""
        documents = [self.tok_encode(string) for (string,) in (r.args for r in requests)]
        scored = self._loglikelihood_tokens([(None, [self.prefix_token_id], doc) for doc in documents], disable_tqdm)
        for request, (logprob, _) in zip(requests, scored):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, logprob)
        return [logprob for logprob, _ in scored]

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Continue each context until one of its `until` strings (cut off), token 0 or max_gen_toks."""
        groups = {}   # requests with the same generation options run in batches together
        for i, request in enumerate(requests):
            groups.setdefault(json.dumps(request.args[1], sort_keys=True, default=str), []).append(i)
        results = [None] * len(requests)
        bar = tqdm(total=len(requests), desc="eaglefinch generate_until", disable=disable_tqdm)
        for indices in groups.values():
            options = dict(normalize_gen_kwargs(requests[indices[0]].args[1], self.max_gen_toks))
            until, max_gen_toks = options.pop("until"), options.pop("max_gen_toks")
            sampler = sampler_for(options)
            for b in range(0, len(indices), self.batch_size):
                batch = indices[b:b + self.batch_size]
                texts, _ = generate_text(self.model, [requests[i].args[0] for i in batch], max_gen_toks, sampler,
                                         tokenizer=self.tokenizer, stop=until, seed=[self.seed + i for i in batch])
                for i, text in zip(batch, texts):
                    results[i] = text
                    self.cache_hook.add_partial("generate_until", requests[i].args, text)
                bar.update(len(batch))
        bar.close()
        return results


# lazily, by name: the class is the one of this module under its own name (also under `python -m`)
model_registry.register("eaglefinch", target="eaglefinch.text.harness:EagleFinchLM")


def main():
    """lm-eval's command line (`lm_eval ...`, arguments from sys.argv), the eaglefinch model registered."""
    from lm_eval.__main__ import cli_evaluate
    cli_evaluate()


if __name__ == "__main__":
    main()
