"""The token stream of a VisualRWKV sample: where the image tokens go, what is supervised, the loss.

A conversation becomes one id sequence in the RWKV World chat format

    "User: <human text>\\n\\nAssistant: <answer>\\n\\n" (repeated per turn)

in which the `<image>` placeholder of the human text is replaced by `n_image_tokens` slots (filled
with `fill_id`; the model overwrites their embeddings with the projected image tokens, see
`splice_image_tokens`). Only answer tokens, including their "\\n\\n" terminator (the stop token at
inference), are supervised. Where the image goes relative to the instruction is chosen by
`image_position`:

    "inline"    where the placeholder is written in the human text (LLaVA data)
    "first"     image, then the instruction (VisualRWKV stage 1)
    "sandwich"  instruction, image, instruction (VisualRWKV stage 2): an RNN reads the image
                already knowing the question, and the question is fresh when it answers

Bidirectional trick: VisualRWKV reverses the image span before every odd-numbered block and
restores it after (the backbone's `reverse_span` argument, one span per sample), so half the
layers scan the image backwards. The pattern must be the same in training and inference.

Everything here is a pure function on lists and tensors; tokenization is the caller's `encode`.
"""
import re
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from eaglefinch.rwkv_core.data import Batch

IMAGE_PLACEHOLDER = "<image>"
IMAGE_POSITIONS = ("inline", "first", "sandwich")
USER, ASSISTANT, TURN_END = "User: ", "Assistant:", "\n\n"


@dataclass(frozen=True)
class TokenLayout:
    """One sample's sequence. All lists have length T.

    ids:        token ids; positions inside image_span hold fill ids that the model replaces
    image_span: (start, end) of the image tokens in ids, end exclusive; start == end if no image
    loss_mask:  1 where ids[t] is an answer token the model must predict, else 0
    """

    ids: list[int]
    image_span: tuple[int, int]
    loss_mask: list[int]


@dataclass(frozen=True)
class VisualBatch(Batch):
    """Right-padded next-token batch with images: inputs[:, t] predicts targets[:, t].

    inputs:      [B, T] int64, ids[:-1] of each sample, padded with pad_id
    targets:     [B, T] int64, ids[1:] of each sample, padded with pad_id
    loss_mask:   [B, T] float32, loss_mask[1:] of each sample, 0 on padding
    image_spans: B (start, end) spans, positions in `inputs`
    pixels:      [B, 3, H, W] images (zeros for a sample without one), or None when no sample has one
    """

    loss_mask: torch.Tensor
    image_spans: list[tuple[int, int]]
    pixels: Optional[torch.Tensor] = None

    def truncated(self, T: int) -> "VisualBatch":
        """The first T positions (an image must lie inside them)."""
        return VisualBatch(self.inputs[:, :T], self.targets[:, :T], self.loss_mask[:, :T], self.image_spans,
                           self.pixels)


def build_layout(
    ids: Sequence[int], is_answer: Sequence[int], image_at: Optional[int], n_image_tokens: int, fill_id: int = 0
) -> TokenLayout:
    """Insert n_image_tokens fill ids before ids[image_at] (None: no image) and mark answer tokens.

    ids:       [L] the tokenized conversation without image tokens
    is_answer: [L] 1 for answer tokens, 0 for prompt tokens
    Returns a layout of length L + n_image_tokens (L without an image); image tokens are never
    supervised.
    """
    if len(ids) != len(is_answer):
        raise ValueError(f"ids and is_answer differ in length: {len(ids)} vs {len(is_answer)}")
    if image_at is None:
        return TokenLayout(list(ids), (0, 0), [int(bool(a)) for a in is_answer])
    if not 0 <= image_at <= len(ids):
        raise ValueError(f"image position {image_at} is outside the {len(ids)} prompt tokens")
    if n_image_tokens < 1:
        raise ValueError(f"n_image_tokens must be >= 1, got {n_image_tokens}")
    ids = list(ids[:image_at]) + [fill_id] * n_image_tokens + list(ids[image_at:])
    mask = [int(bool(a)) for a in is_answer[:image_at]] + [0] * n_image_tokens
    mask += [int(bool(a)) for a in is_answer[image_at:]]
    return TokenLayout(ids, (image_at, image_at + n_image_tokens), mask)


def place_image(human_text: str, image_position: str = "inline") -> str:
    """Rewrite a human message that holds one `<image>` so the image sits where image_position says.

    "first" gives "<image>\\n{instruction}", "sandwich" gives "{instruction}\\n<image>\\n{instruction}",
    where the instruction is the message without its placeholder; "inline" leaves it as written.
    """
    if image_position not in IMAGE_POSITIONS:
        raise ValueError(f"image_position must be one of {IMAGE_POSITIONS}, got {image_position!r}")
    if human_text.count(IMAGE_PLACEHOLDER) != 1:
        raise ValueError(f"expected one {IMAGE_PLACEHOLDER} in the message, found {human_text.count(IMAGE_PLACEHOLDER)}")
    instruction = human_text.replace(IMAGE_PLACEHOLDER, "").strip()
    if image_position == "first":
        return f"{IMAGE_PLACEHOLDER}\n{instruction}"
    if image_position == "sandwich":
        return f"{instruction}\n{IMAGE_PLACEHOLDER}\n{instruction}"
    return human_text


def _clean(text: str) -> str:
    # "\n\n" ends a turn, so blank lines inside a message collapse to one newline
    return re.sub(r"\n\s*\n", "\n", text.strip())


def encode_conversation(
    turns: Sequence[tuple[str, Optional[str]]],
    encode: Callable[[str], list[int]],
    n_image_tokens: int,
    image_position: str = "inline",
    fill_id: int = 0,
) -> TokenLayout:
    """Tokenize (human, answer) turns into a layout; at most one human message holds `<image>`.

    An answer of None in the last turn makes a generation prompt: the ids end with "Assistant:"
    and nothing is supervised; the model then generates " <answer>\\n\\n".
    """
    ids, is_answer, image_at = [], [], None
    for k, (human, answer) in enumerate(turns):
        if answer is None and k != len(turns) - 1:
            raise ValueError(f"only the last turn may have no answer (turn {k} has none)")
        human = _clean(human)
        if IMAGE_PLACEHOLDER in human:
            if image_at is not None:
                raise ValueError(f"a conversation may hold only one {IMAGE_PLACEHOLDER} (turn {k} has another)")
            before, after = place_image(human, image_position).split(IMAGE_PLACEHOLDER)
            ids += encode(USER + before)
            image_at = len(ids)
            ids += encode(after + TURN_END + ASSISTANT)
        else:
            ids += encode(USER + human + TURN_END + ASSISTANT)
        is_answer += [0] * (len(ids) - len(is_answer))
        if answer is not None:
            reply = encode(" " + _clean(answer) + TURN_END)
            ids += reply
            is_answer += [1] * len(reply)
    return build_layout(ids, is_answer, image_at, n_image_tokens, fill_id)


def collate(layouts: Sequence[TokenLayout], pad_id: int = 0) -> VisualBatch:
    """Stack layouts into a right-padded next-token batch (without pixels: see data.collate_visual).

    Right padding keeps every real token's recurrent state exact (pads come after it), so image
    spans differ per sample and are carried as a list.
    """
    T = max(len(layout.ids) for layout in layouts) - 1
    inputs = torch.full((len(layouts), T), pad_id, dtype=torch.long)
    targets = torch.full((len(layouts), T), pad_id, dtype=torch.long)
    loss_mask = torch.zeros(len(layouts), T)
    for b, layout in enumerate(layouts):
        n = len(layout.ids) - 1
        if layout.image_span[1] > n:
            raise ValueError(f"sample {b}: the image is the last thing in the sequence; nothing follows it to predict")
        ids = torch.tensor(layout.ids, dtype=torch.long)
        inputs[b, :n], targets[b, :n] = ids[:-1], ids[1:]
        loss_mask[b, :n] = torch.tensor(layout.loss_mask[1:], dtype=torch.float32)
    return VisualBatch(inputs, targets, loss_mask, [layout.image_span for layout in layouts])


def splice_image_tokens(text_emb: torch.Tensor, image_emb: torch.Tensor, spans: Sequence[tuple[int, int]]) -> torch.Tensor:
    """Put each sample's image tokens into its span of the embedded sequence.

    text_emb:  [B, T, C] embeddings of VisualBatch.inputs
    image_emb: [B, N, C] projected image tokens
    spans:     B spans of length N, or empty (start == end) for a sample without an image
    Returns [B, T, C]; gradients reach image_emb and text_emb outside the spans.
    """
    out = text_emb.clone()
    for b, (start, end) in enumerate(spans):
        if end == start:
            continue
        if end - start != image_emb.shape[1]:
            raise ValueError(f"sample {b}: span {start}:{end} holds {end - start} tokens, the image has {image_emb.shape[1]}")
        out[b, start:end] = image_emb[b]
    return out


def per_sample_loss(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Cross-entropy averaged over each sample's supervised tokens, then over samples.

    logits: [B, T, V]; targets: [B, T] int64; mask: [B, T], 1 on answer tokens.
    A sample with no supervised token contributes 0 and still counts in the batch mean (as in
    VisualRWKV), so the value does not depend on how samples are grouped into batches.
    """
    token_loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="none").view(targets.shape)
    mask = mask.to(token_loss.dtype)
    per_sample = (token_loss * mask).sum(1) / mask.sum(1).clamp(min=1)
    return per_sample.mean()
