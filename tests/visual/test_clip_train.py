import math
import random

import pytest
import torch

from eaglefinch.visual import shapes
from eaglefinch.visual.clip_train import _distinct_caption_batches, retrieval_accuracy, save_clip, train_clip
from eaglefinch.visual.encoder import VisionEncoder
from tests.core.test_checkpoint_errors import RunsCode


def test_batches_never_repeat_a_caption_and_cover_everything():
    captions = ["a", "b", "a", "c", "b", "d", "e", "a"]
    batches = _distinct_caption_batches(captions, 3, random.Random(0))
    seen = set()
    for _ in range(20):
        batch = next(batches)
        assert len(batch) == 3 and len({captions[i] for i in batch}) == 3
        seen.update(batch)
    assert seen == set(range(len(captions)))
    with pytest.raises(ValueError, match="distinct captions"):
        next(_distinct_caption_batches(["a", "a", "b"], 3, random.Random(0)))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny CLIP that memorises 8 very different scenes."""
    rng = random.Random(0)
    scenes = [shapes.sample_scene(rng, shape, colour, place, 1)
              for shape, colour, place in zip(shapes.SHAPES * 3, shapes.COLOURS, shapes.PLACES)]
    scenes += [shapes.sample_scene(rng, "square", colour, "centre", 3) for colour in ("red", "blue", "green", "yellow")]
    pairs = [(shapes.render(s), shapes.caption(s)) for s in scenes[:8]]
    run = train_clip(pairs, steps=60, batch_size=8, seed=0)
    path = tmp_path_factory.mktemp("clip") / "clip.pt"
    save_clip(run, path)
    return pairs, run, path


def test_training_lowers_the_contrastive_loss_and_learns_the_pairs(trained):
    pairs, run, _ = trained
    assert len(run.losses) == 60 and run.seconds > 0
    assert sum(run.losses[-5:]) / 5 < 0.5 * math.log(8)  # chance level is ln 8
    captions = [c for _, c in pairs]
    accuracy = retrieval_accuracy(run, pairs, captions)
    with torch.no_grad():  # the same measure written out directly
        image = run.model.encode_image(torch.stack([run.preprocess(i) for i, _ in pairs]), normalize=True)
        text = run.model.encode_text(run.tokenizer(captions), normalize=True)
        direct = ((image @ text.T).argmax(1) == torch.arange(8)).float().mean().item()
    assert accuracy == pytest.approx(direct)
    assert accuracy >= 0.75


def test_saved_weights_load_into_the_vision_encoder(trained):
    _, run, path = trained
    encoder = VisionEncoder(pretrained=str(path))
    for name, value in run.model.visual.state_dict().items():
        assert torch.equal(encoder.tower.state_dict()[name], value), name
    assert torch.load(path, weights_only=True)["model_name"] == run.model_name


def test_a_code_carrying_or_damaged_clip_file_gives_one_line(trained, tmp_path):
    """What `visual train --clip FILE` prints: the file and the problem, never torch's advice to load
    it with weights_only=False; the pickle's code never runs."""
    _, run, path = trained
    evil, cut = tmp_path / "evil.pt", tmp_path / "cut.pt"
    torch.save({"state_dict": run.model.state_dict(), "x": RunsCode(tmp_path / "PWNED")}, evil)
    cut.write_bytes(path.read_bytes()[:1000])
    for bad, problem in ((evil, "it contains pickled code or objects other than tensors, which are refused"),
                         (cut, "truncated, corrupt or not a PyTorch file")):
        with pytest.raises(ValueError) as e:
            VisionEncoder(pretrained=str(bad))
        assert str(e.value) == f"cannot load {bad} into 'EagleFinch-ViT-Tiny': {problem}"
    assert not (tmp_path / "PWNED").exists()


def test_bad_arguments():
    with pytest.raises(ValueError, match="steps"):
        train_clip([], steps=0)
