"""VisualRWKV on the GPU (skipped without CUDA), with open_clip's ViT-B-16 (random weights, 197 image
tokens) on a small Finch: captions of a batch of images through the compiled engine (one prefill of
embeddings with the reversed image span, CUDA-graph decode) equal the plain fp32 model recomputing the
whole sequence for every token; a bf16 model takes the fp32 preprocessing output, and its engine's first
logits are no further from the fp32 model's than twice the plain bf16 model's. Run on the device:
python -m pytest -q tests/gpu"""
import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("needs CUDA", allow_module_level=True)

from eaglefinch.text.tokenizer import WorldTokenizer                           # noqa: E402
from eaglefinch.visual.caption import answer_ids, prompt_ids, start_answers    # noqa: E402
from tests.gpu.test_engine_gpu import BF16_VS_PLAIN, relative_error            # noqa: E402
from tests.visual.test_real_sizes import pictures, plain_greedy, real_size_vlm # noqa: E402

torch._dynamo.config.cache_size_limit = 64   # each model compiles the engine's layer steps for itself


def gpu_vlm(dtype):
    """The same weights for every dtype: built and perturbed on the CPU, then moved."""
    return real_size_vlm("ViT-B-16", n_layer=4, n_embd=256, head_size=64, lora_dims=(32, 64)).to("cuda", dtype)


def test_graphed_engine_captions_equal_the_plain_model_fp32():
    vlm, world = gpu_vlm(torch.float32), WorldTokenizer()
    images = pictures(3)
    ours = answer_ids(vlm, world, images, max_tokens=8)
    for image, tokens in zip(images, ours):
        assert tokens, "the random model stopped at once; nothing to compare"
        assert tokens == plain_greedy(vlm, world, image, 8)


def test_bf16_model_takes_fp32_pixels_and_its_engine_is_as_close_to_fp32_as_the_plain_model():
    ref, vlm, world = gpu_vlm(torch.float32), gpu_vlm(torch.bfloat16), WorldTokenizer()
    pixels = torch.stack([ref.encoder.preprocess(image) for image in pictures(2)])   # fp32, on the host
    layout = prompt_ids(ref, world)
    inputs, spans = torch.tensor([layout.ids] * 2, device="cuda"), [layout.image_span] * 2
    with torch.no_grad():
        want = ref(inputs, pixels.cuda(), spans)[0][:, -1].float()
        plain = vlm(inputs, pixels.cuda(), spans)[0][:, -1]
    generation = start_answers(vlm, world, vlm.cached_image_embeds(pixels), max_tokens=4, stop_ids=())
    for ours, bf16, fp32 in zip(generation.logits, plain, want):
        print(f"relative logit error against fp32: engine {relative_error(ours, fp32):.4f}, "
              f"plain bf16 {relative_error(bf16, fp32):.4f}")
        assert relative_error(ours, fp32) <= BF16_VS_PLAIN * relative_error(bf16, fp32)
    for _ in generation:   # the CUDA-graph decode steps
        pass
    assert [len(tokens) for tokens in generation.tokens] == [4, 4] and vlm.features.misses == 2
