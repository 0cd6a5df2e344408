import json

import open_clip
import pytest
import torch
from PIL import Image

from eaglefinch.visual.encoder import DEFAULT_MODEL, VisionEncoder, register_model_configs
from eaglefinch.visual.projector import build_projector


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return VisionEncoder(random_init=True, cls_token=False)


def block_outputs(tower, images):
    """Outputs of every transformer block, taken with forward hooks: [B, 1 + patches, width], CLS first."""
    outputs = []
    hooks = [block.register_forward_hook(lambda m, i, o: outputs.append(o)) for block in tower.transformer.resblocks]
    with torch.no_grad():
        tower(images)
    for hook in hooks:
        hook.remove()
    return outputs


def test_tokens_are_the_chosen_blocks_patch_outputs(encoder):
    images = torch.randn(2, 3, 64, 64)
    tokens = encoder(images)
    assert tokens.shape == (2, encoder.n_tokens, encoder.width) == (2, 64, 64)
    last, = block_outputs(encoder.tower, images)[-1:]
    torch.testing.assert_close(tokens, last[:, 1:])
    penultimate = VisionEncoder(layer=-2, random_init=True, cls_token=False)
    penultimate.tower.load_state_dict(encoder.tower.state_dict())
    torch.testing.assert_close(penultimate(images), block_outputs(encoder.tower, images)[-2][:, 1:])


def test_cls_token_goes_last_and_pooling_averages_grid_blocks(encoder):
    images = torch.randn(2, 3, 64, 64)
    with_cls = VisionEncoder(random_init=True)
    with_cls.tower.load_state_dict(encoder.tower.state_dict())
    last = block_outputs(encoder.tower, images)[-1]
    tokens = with_cls(images)
    assert with_cls.n_tokens == 65
    torch.testing.assert_close(tokens[:, :-1], last[:, 1:])
    torch.testing.assert_close(tokens[:, -1], last[:, 0])
    pooled = VisionEncoder(random_init=True, pool=2, cls_token=False)
    pooled.tower.load_state_dict(encoder.tower.state_dict())
    grid = last[:, 1:].reshape(2, 8, 8, 64)  # row-major patch grid
    expected = grid.reshape(2, 4, 2, 4, 2, 64).mean(dim=(2, 4)).reshape(2, 16, 64)
    assert pooled.n_tokens == 16
    torch.testing.assert_close(pooled(images), expected)
    assert VisionEncoder(random_init=True, pool=3).n_tokens == 9 + 1  # an 8x8 grid pools to ceil(8/3)^2


def test_other_tower_types_work_and_one_without_class_token_says_so(tmp_path):
    config = {"embed_dim": 32, "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16},
              "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 1, "layers": 1}}
    (tmp_path / "Test-RN-Tiny.json").write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path / "Test-RN-Tiny.json")
    with pytest.raises(ValueError, match="has no class token; use cls_token=False"):
        VisionEncoder("Test-RN-Tiny", random_init=True)
    resnet = VisionEncoder("Test-RN-Tiny", random_init=True, cls_token=False)
    assert resnet(torch.randn(2, 3, 64, 64)).shape == (2, resnet.n_tokens, resnet.width) == (2, 4, 512)


def test_frozen_tower_gets_no_gradient_and_stays_in_eval(encoder):
    projector = build_projector("linear", encoder.width, 32)
    encoder.train()
    assert not encoder.tower.training
    projector(encoder(torch.randn(2, 3, 64, 64))).square().sum().backward()
    assert all(p.grad is None and not p.requires_grad for p in encoder.parameters())
    assert projector.weight.grad is not None and projector.weight.grad.abs().sum() > 0


def test_unfrozen_tower_trains():
    encoder = VisionEncoder(random_init=True, freeze=False)
    encoder.train()
    assert encoder.tower.training
    encoder(torch.randn(2, 3, 64, 64)).square().sum().backward()
    assert encoder.tower.conv1.weight.grad.abs().sum() > 0


def test_preprocess_gives_the_tower_input(encoder):
    x = encoder.preprocess(Image.new("RGB", (300, 200), "white"))
    assert x.shape == (3, 64, 64) and encoder.image_size == (64, 64)


def test_loads_weights_from_a_local_state_dict_file(tmp_path, encoder):
    register_model_configs()
    torch.manual_seed(5)
    clip = open_clip.create_model(DEFAULT_MODEL)
    torch.save(clip.state_dict(), tmp_path / "clip.pt")
    loaded = VisionEncoder(pretrained=str(tmp_path / "clip.pt"))
    for name, value in clip.visual.state_dict().items():
        assert torch.equal(loaded.tower.state_dict()[name], value), name
    other = open_clip.create_model(DEFAULT_MODEL, vision_cfg={"image_size": 64, "layers": 1, "width": 64, "head_width": 32, "patch_size": 16})
    torch.save(other.state_dict(), tmp_path / "other.pt")
    with pytest.raises(ValueError, match=f"cannot load .*other.pt into '{DEFAULT_MODEL}'"):
        VisionEncoder(pretrained=str(tmp_path / "other.pt"))


def test_weight_errors_say_what_to_do(tmp_path):
    with pytest.raises(ValueError, match="random_init=True") as error:
        VisionEncoder()
    assert "pretrained=<path" in str(error.value)
    with pytest.raises(ValueError, match="not both"):
        VisionEncoder(pretrained="openai", random_init=True)
    with pytest.raises(ValueError, match="neither a file nor a known tag"):
        VisionEncoder(pretrained=str(tmp_path / "nothing.pt"))
    with pytest.raises(ValueError, match="unknown open_clip model"):
        VisionEncoder("ViT-Nope", random_init=True)
    with pytest.raises(ValueError, match="layer 5 does not exist"):
        VisionEncoder(layer=5, random_init=True)
    with pytest.raises(ValueError, match="pool"):
        VisionEncoder(pool=0, random_init=True)


def test_hub_tag_offline_fails_with_a_clear_message(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="pass a local weights file"):
        VisionEncoder("RN50", pretrained="openai")


def test_projectors():
    x = torch.randn(2, 5, 8)
    linear = build_projector("linear", 8, 16)
    assert linear(x).shape == (2, 5, 16) and linear.bias is None
    torch.testing.assert_close(linear(x), x @ linear.weight.T)
    mlp = build_projector("mlp", 8, 16)
    first, _, second = mlp
    torch.testing.assert_close(mlp(x), second(torch.nn.functional.gelu(first(x))))
    with pytest.raises(ValueError, match="linear"):
        build_projector("gated", 8, 16)
