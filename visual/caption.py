"""Captioning and visual question answering with the recurrent state, on the inference engine.

The prompt (image and question) is read once; each new token then costs one recurrent step with
the carried state, where VisualRWKV's own code re-reads the whole sequence for every token.
Odd blocks reverse the image span only inside the prompt, which is read whole, so the result is
the same as recomputing the full sequence at every step (tested). A batch of images is one
prefill of embeddings and one batched decode; each distinct image goes through the encoder once
(`VisualRWKV.cached_image_embeds`: an image seen before, under any question, is not encoded again).
"""
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import torch
from PIL import Image

from eaglefinch.rwkv_core.generate import Generation
from eaglefinch.rwkv_core.sampling import SamplerConfig
from eaglefinch.visual.images import DEFAULT_MAX_PIXELS, ImageError, ImageOrError, iter_folder_images, read_or_error
from eaglefinch.visual.model import VisualRWKV
from eaglefinch.visual.prompt import IMAGE_PLACEHOLDER, TURN_END, encode_conversation

DEFAULT_PROMPT = "Describe the image."
GREEDY = SamplerConfig(temperature=0.0)


def prompt_ids(vlm: VisualRWKV, tokenizer, prompt: str = DEFAULT_PROMPT):
    """The token layout of a one-turn question about an image (an `<image>` is added if missing)."""
    if IMAGE_PLACEHOLDER not in prompt:
        prompt = f"{IMAGE_PLACEHOLDER}\n{prompt}"
    return encode_conversation([(prompt, None)], tokenizer.encode, vlm.n_image_tokens, vlm.cfg.image_position)


def stop_ids_of(tokenizer) -> set[int]:
    """What ends an answer: token 0 and the end-of-turn "\\n\\n" (when it is one token)."""
    turn_end = tokenizer.encode(TURN_END)
    return {0} | ({turn_end[0]} if len(turn_end) == 1 else set())


@torch.no_grad()
def start_answers(vlm: VisualRWKV, tokenizer, image_embeds: torch.Tensor, prompt: str = DEFAULT_PROMPT,
                  max_tokens: int = 60, sampler: SamplerConfig = GREEDY, seed: Optional[int] = 0,
                  stop_ids=None) -> Generation:
    """The prompt read once for each image, on the engine: a Generation ready to decode the answers.

    image_embeds: [B, N, n_embd] projected image tokens (`vlm.cached_image_embeds`). Every row has
    the same layout, so the B prompts are one batch of embeddings (text embedded, image spliced in)
    that the engine prefills together (`Engine.prefill_embeds`). stop_ids: default `stop_ids_of`.
    """
    layout = prompt_ids(vlm, tokenizer, prompt)
    B = image_embeds.shape[0]
    spans = [layout.image_span] * B
    embeds = vlm.input_embeds(torch.tensor([layout.ids] * B, device=image_embeds.device), spans, image_embeds)
    return Generation(vlm.model, None, max_tokens, sampler, embeds=embeds, reverse_span=vlm.scan_spans(spans),
                      stop_ids=stop_ids_of(tokenizer) if stop_ids is None else stop_ids, seed=seed)


def answer_ids(vlm: VisualRWKV, tokenizer, images: Sequence[Image.Image], prompt: str = DEFAULT_PROMPT,
               max_tokens: int = 60, sampler: SamplerConfig = GREEDY, seed: Optional[int] = 0) -> list[list[int]]:
    """The generated token ids for each RGB image (the stop token excluded); see `answer`."""
    pixels = torch.stack([vlm.encoder.preprocess(image) for image in images])
    generation = start_answers(vlm, tokenizer, vlm.cached_image_embeds(pixels), prompt, max_tokens, sampler, seed)
    for _ in generation:
        pass
    return generation.tokens


def answer(vlm: VisualRWKV, tokenizer, images: Sequence[Image.Image], prompt: str = DEFAULT_PROMPT,
           max_tokens: int = 60, sampler: SamplerConfig = GREEDY, seed: Optional[int] = 0) -> list[str]:
    """One answer per RGB image to the same prompt, decoded with the state carried.

    Stops at the end-of-turn "\\n\\n" (or token 0) or after max_tokens; greedy by default.
    """
    if not images:
        return []
    ids = answer_ids(vlm, tokenizer, images, prompt, max_tokens, sampler, seed)
    return [tokenizer.decode(tokens).split(TURN_END)[0].strip() for tokens in ids]


def iter_images(paths: Sequence, max_pixels: int = DEFAULT_MAX_PIXELS) -> Iterator[tuple[Path, ImageOrError]]:
    """(path, RGB image) or (path, ImageError) for each file, and for every file of each folder."""
    for path in map(Path, paths):
        if path.is_dir():
            yield from iter_folder_images(path, max_pixels=max_pixels)
        else:
            yield path, read_or_error(path, max_pixels)


def caption_files(vlm: VisualRWKV, tokenizer, paths: Sequence, prompt: str = DEFAULT_PROMPT,
                  batch_size: int = 16, on_result: Optional[Callable] = None,
                  max_pixels: int = DEFAULT_MAX_PIXELS, **kwargs):
    """Caption image files (or every file of the folders given); bad files are reported, not fatal.

    Images are read as the batches go, so a large folder never sits in memory. Returns
    (results, errors): results [(path, caption)], errors [(path, ImageError)], in input order.
    `on_result(path, caption)` is called as each batch finishes (progress, streaming output).
    Images of more than `max_pixels` pixels are bad files too.
    """
    results, errors, pending = [], [], []

    def flush():
        captions = answer(vlm, tokenizer, [image for _, image in pending], prompt, **kwargs)
        for (path, _), text in zip(pending, captions):
            results.append((path, text))
            if on_result:
                on_result(path, text)
        pending.clear()

    for path, image in iter_images(paths, max_pixels):
        if isinstance(image, ImageError):
            errors.append((path, image))
            continue
        pending.append((path, image))
        if len(pending) == batch_size:
            flush()
    if pending:
        flush()
    return results, errors
