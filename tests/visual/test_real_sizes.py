"""VisualRWKV at the encoder sizes its users run, on a tiny Finch: open_clip's ViT-B-16 itself (224 px,
196 patches; random weights, built in about a second) and ViT-L-14-336's patch geometry (336 px, 576
patches) at reduced width and depth. Their token geometry, captions through the engine against the
plain model recomputing the whole sequence, the feature cache (each distinct image encoded once), and
a bf16 tower fed the fp32 preprocessing output."""
import json

import open_clip
import pytest
import torch

from eaglefinch.rwkv_core import RWKV, RWKVConfig
from eaglefinch.rwkv_core.scheduler import LRUCache
from eaglefinch.text.tokenizer import WorldTokenizer
from eaglefinch.visual.caption import answer_ids, prompt_ids, stop_ids_of
from eaglefinch.visual.encoder import VisionEncoder
from eaglefinch.visual.model import VisualConfig, VisualRWKV, pixel_digest, pixel_digests
from eaglefinch.visual.shapes import make_splits, render

NARROW_L14_336 = "Test-ViT-L-14-336-Narrow"   # ViT-L-14-336's image and patch size, 64 wide, 2 blocks


@pytest.fixture(scope="module", autouse=True)
def narrow_l14_336(tmp_path_factory):
    path = tmp_path_factory.mktemp("open_clip_configs") / f"{NARROW_L14_336}.json"
    path.write_text(json.dumps({
        "embed_dim": 64,
        "vision_cfg": {"image_size": 336, "layers": 2, "width": 64, "head_width": 32, "patch_size": 14},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 1, "layers": 1}}))
    open_clip.add_model_config(path)


@pytest.fixture(scope="module")
def world():
    return WorldTokenizer()


def real_size_vlm(encoder_name, pool=1, n_layer=2, n_embd=64, head_size=32, lora_dims=(8, 16)):
    """A VisualRWKV of the named tower (random weights) and a small Finch over the World vocabulary,
    every weight perturbed so that no part is a no-op (the official init zeroes some outputs)."""
    torch.manual_seed(0)
    cfg = VisualConfig(encoder=encoder_name, pool=pool, projector="linear", image_position="first")
    encoder = VisionEncoder(cfg.encoder, random_init=True, pool=cfg.pool)
    model = RWKV(RWKVConfig(arch="finch", n_layer=n_layer, n_embd=n_embd, head_size=head_size, vocab_size=65536,
                            mix_lora_dim=lora_dims[0], decay_lora_dim=lora_dims[1]))
    vlm = VisualRWKV(model, encoder, cfg)
    with torch.no_grad():
        for p in list(vlm.model.parameters()) + list(vlm.projector.parameters()):
            p.add_(torch.randn_like(p) * 0.2)
    return vlm.eval()


def pictures(n):
    return [render(scene) for scene in make_splits(n, 0, seed=5, size=96)[0]]


@pytest.mark.parametrize("name,pool,size,n_tokens,width", [
    ("ViT-B-16", 1, 224, 14 * 14 + 1, 768),
    ("ViT-B-16", 2, 224, 7 * 7 + 1, 768),
    (NARROW_L14_336, 1, 336, 24 * 24 + 1, 64),
    (NARROW_L14_336, 2, 336, 12 * 12 + 1, 64),
])
def test_token_geometry_preprocessing_and_projector_follow_the_tower(world, name, pool, size, n_tokens, width):
    vlm = real_size_vlm(name, pool)
    assert vlm.encoder.image_size == (size, size)
    assert vlm.n_image_tokens == n_tokens and vlm.encoder.width == width
    assert vlm.projector.weight.shape == (64, width)   # tower width -> n_embd
    pixels = vlm.encoder.preprocess(pictures(1)[0].resize((400, 300)))   # any image size in
    assert pixels.shape == (3, size, size)
    layout = prompt_ids(vlm, world)
    assert layout.image_span[1] - layout.image_span[0] == n_tokens
    assert vlm.cached_image_embeds(pixels[None]).shape == (1, n_tokens, 64)


def plain_greedy(vlm, tokenizer, image, max_tokens):
    """The slow obvious twin of captioning: the whole sequence recomputed by the plain model for every
    new token, the argmax taken, until a stop id."""
    layout = prompt_ids(vlm, tokenizer)
    device = vlm.model.emb.weight.device
    pixels = vlm.encoder.preprocess(image)[None].to(device)
    tokens = []
    with torch.no_grad():
        for _ in range(max_tokens):
            logits, _ = vlm(torch.tensor([layout.ids + tokens], device=device), pixels, [layout.image_span])
            token = int(logits[0, -1].argmax())
            if token in stop_ids_of(tokenizer):
                break
            tokens.append(token)
    return tokens


@pytest.mark.parametrize("name", ["ViT-B-16", NARROW_L14_336])
def test_captions_through_the_engine_equal_the_plain_model(world, name):
    vlm = real_size_vlm(name)
    images = pictures(2)
    ours = answer_ids(vlm, world, images, max_tokens=6)
    for image, tokens in zip(images, ours):
        assert tokens, "the random model stopped at once; nothing to compare"
        assert tokens == plain_greedy(vlm, world, image, 6)
    assert ours[0] != ours[1]   # the image reaches the answer


def count_encoded(vlm):
    """A list that gets the number of images of every call of the encoder."""
    calls = []
    vlm.encoder.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    return calls


def test_each_distinct_image_is_encoded_once(world):
    vlm = real_size_vlm("ViT-B-16")
    encoded = count_encoded(vlm)
    a, b = pictures(2)
    first = answer_ids(vlm, world, [a, b, a], max_tokens=3)
    assert encoded == [2] and (vlm.features.misses, vlm.features.hits) == (2, 1)   # a twice in one batch
    assert first[0] == first[2]
    again = answer_ids(vlm, world, [b, a], prompt="What is in the picture?", max_tokens=3)
    assert encoded == [2] and (vlm.features.misses, vlm.features.hits) == (2, 3)   # another question
    assert again == answer_ids(vlm, world, [b, a], prompt="What is in the picture?", max_tokens=3)
    # what the cache gives is what the encoder computes
    pixels = torch.stack([vlm.encoder.preprocess(image) for image in (a, b)])
    with torch.no_grad():
        torch.testing.assert_close(vlm.cached_image_embeds(pixels), vlm.image_embeds(pixels), rtol=0, atol=0)


def test_a_cache_smaller_than_the_batch_still_answers_every_image(world):
    vlm = real_size_vlm(NARROW_L14_336)
    a, b = pictures(2)
    want = answer_ids(vlm, world, [a, b], max_tokens=3)
    one_image = vlm.n_image_tokens * vlm.encoder.width * 4   # fp32 tokens of one image
    vlm.features = LRUCache(one_image)
    encoded = count_encoded(vlm)
    assert answer_ids(vlm, world, [a, b], max_tokens=3) == want
    assert answer_ids(vlm, world, [a], max_tokens=3) == want[:1]
    assert encoded == [2, 1] and vlm.features.bytes <= one_image   # b pushed a out


def test_a_bf16_tower_takes_the_fp32_preprocessing_output():
    vlm = real_size_vlm(NARROW_L14_336)
    pixels = torch.stack([vlm.encoder.preprocess(image) for image in pictures(2)])   # fp32
    with torch.no_grad():
        want = vlm.image_embeds(pixels)
        vlm.to(torch.bfloat16)
        ours = vlm.cached_image_embeds(pixels)   # a new key: the fp32 tokens are not reused
    assert ours.dtype == torch.bfloat16 and vlm.features.misses == 2
    torch.testing.assert_close(ours.float(), want, rtol=0.05, atol=0.05 * want.abs().max().item())


def test_a_batch_hashes_as_its_images_one_by_one():
    pixels = torch.randn(5, 3, 16, 16)
    pixels[3] = pixels[1]
    keys = pixel_digests(pixels, torch.float32)
    assert keys == [pixel_digest(image, torch.float32) for image in pixels]
    assert keys[3] == keys[1] and len(set(keys)) == 4
    assert pixel_digests(pixels[:1], torch.bfloat16) != keys[:1]   # the tower's dtype is part of the key
