"""Bad inputs to the visual commands: unreadable images, non-UTF-8 file names, huge images, bad
numeric options. Each gives one clear line (or a skipped-and-counted warning), never a lost run."""
import json
import os

import pytest
import torch

from eaglefinch.cli import main as cli
from eaglefinch.rwkv_core.data import DataError
from eaglefinch.visual.data import read_records, write_jsonl
from eaglefinch.visual.images import load_image
from eaglefinch.visual.run import VisualRun
from eaglefinch.visual.shapes import write_shapes_dataset
from eaglefinch.visual.train import drop_unreadable_images, train_visual
from tests.visual.test_model import TINY_CONFIG


def write_config(folder, **train):
    """test_model's tiny config with these `train` values: one step, no checkpoint or validation
    before the last step unless asked."""
    cfg = json.loads(json.dumps(TINY_CONFIG))
    cfg["train"].update({"max_steps": 1, "save_every": 100, "val_every": 100, **train})
    path = folder / "visual.json"
    path.write_text(json.dumps(cfg))
    return path


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    write_shapes_dataset(root, n_train=8, n_heldout=4, seed=2)
    return root


@pytest.fixture(scope="module")
def run(shapes, tmp_path_factory):
    """A visual run trained for one step: enough for `caption` and `eval` to open."""
    folder = tmp_path_factory.mktemp("run")
    train_visual(write_config(folder), shapes / "train.jsonl", folder / "run", random_encoder=True, progress=False)
    return folder / "run"


def with_bad_images(source, folder):
    """A copy of the caption JSONL `source` plus three unreadable images: truncated, not an image, missing."""
    folder.mkdir(exist_ok=True)
    full = read_records(source)[0].image.read_bytes()
    (folder / "cut.png").write_bytes(full[: len(full) // 2])
    (folder / "notes.png").write_text("not an image")
    records = [json.loads(line) for line in source.read_text().splitlines()]
    for record in records:  # absolute paths: the copy lives in another folder
        record["image"] = str(source.parent / record["image"])
    bad = [{"image": str(folder / name), "caption": "one red circle at the top"}
           for name in ("cut.png", "notes.png", "missing.png")]
    path = folder / source.name
    write_jsonl(path, records[:2] + bad + records[2:])
    return path


# -- item 4: an unreadable image never stops training at a random step, nor eval ------------------

def test_a_failing_validation_keeps_the_intervals_checkpoint(shapes, tmp_path, monkeypatch):
    """val_every = save_every: the step's checkpoint is written before its validation runs, so a
    validation that fails (an image gone, out of memory) does not lose the interval's work."""
    import eaglefinch.rwkv_core.train as trainer

    def failing_validation(*args, **kwargs):
        raise RuntimeError("validation ran out of memory")

    monkeypatch.setattr(trainer, "evaluate", failing_validation)
    config, out = write_config(tmp_path, max_steps=3, save_every=1, val_every=1), tmp_path / "run"
    with pytest.raises(RuntimeError, match="validation ran out of memory"):
        train_visual(config, shapes / "train.jsonl", out, val=shapes / "heldout.jsonl", random_encoder=True,
                     progress=False)
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 1
    VisualRun.open(out).load()  # and the inference files of that step are there


def test_train_decodes_every_image_up_front_and_skips_the_unreadable_ones(shapes, tmp_path, capsys):
    data = with_bad_images(shapes / "train.jsonl", tmp_path / "data")
    records = read_records(data)
    kept = drop_unreadable_images(records, data, progress=False)
    assert kept == records[:2] + records[5:]
    err = capsys.readouterr().err
    assert all(name in err for name in ("cut.png", "notes.png", "missing.png"))
    assert "3 of 11 images unreadable" in err

    # the command trains on the readable ones (before: a missing file refused, a corrupt one
    # stopped training at whichever step drew it)
    out = tmp_path / "run"
    assert cli(["visual", "train", "--config", str(write_config(tmp_path, max_steps=3)), "--data", str(data),
                "--out", str(out), "--random-encoder"]) == 0
    assert "3 of 11 images unreadable" in capsys.readouterr().err and (out / "checkpoint.pt").is_file()


def test_train_refuses_data_whose_images_are_all_unreadable(tmp_path, capsys):
    (tmp_path / "notes.png").write_text("not an image")
    data = tmp_path / "data.jsonl"
    write_jsonl(data, [{"image": "notes.png", "caption": "a"}, {"image": "gone.png", "caption": "b"}])
    with pytest.raises(DataError, match="none of its 2 images can be read"):
        drop_unreadable_images(read_records(data), data, progress=False)
    out = tmp_path / "run"
    assert cli(["visual", "train", "--config", str(write_config(tmp_path)), "--data", str(data),
                "--out", str(out), "--random-encoder"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("eaglefinch: error: ") and "none of its 2 images can be read" in err and "notes.png" in err
    assert len(err.splitlines()) == 1 and not out.exists()


def test_eval_skips_and_counts_unreadable_images(shapes, run, tmp_path, capsys):
    data = with_bad_images(shapes / "heldout.jsonl", tmp_path / "data")
    assert cli(["visual", "eval", "--checkpoint", str(run), "--data", str(data), "--out", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert "of 4 images" in out and "3 unreadable image(s) skipped" in out
    assert all(name in err for name in ("cut.png", "notes.png", "missing.png"))
    assert (tmp_path / "captions.png").is_file()
    # nothing readable at all: one error line
    write_jsonl(tmp_path / "bad.jsonl", [{"image": "notes.png", "caption": "x"}])
    (tmp_path / "notes.png").write_text("not an image")
    assert cli(["visual", "eval", "--checkpoint", str(run), "--data", str(tmp_path / "bad.jsonl"),
                "--out", str(tmp_path)]) == 1
    assert "no image could be read (1 bad file(s))" in capsys.readouterr().err


# -- item 5: file names that are not UTF-8 ------------------------------------------------------------

def test_caption_keeps_every_caption_when_a_file_name_is_not_utf8(shapes, run, tmp_path, capsys):
    folder = tmp_path / "pictures"
    folder.mkdir()
    image = load_image(read_records(shapes / "heldout.jsonl")[0].image)
    image.save(folder / "good.png")
    odd = folder / os.fsdecode(b"caf\xff.png")  # Latin-1 bytes in a name: not UTF-8
    image.save(odd)
    (folder / os.fsdecode(b"bad\xfe.png")).write_text("not an image")

    out = tmp_path / "captions.jsonl"
    assert cli(["visual", "caption", str(folder), "--checkpoint", str(run), "--out", str(out)]) == 0
    assert "bad\\xfe.png" in capsys.readouterr().err  # the bad file is reported, its name escaped
    lines = out.read_text(encoding="utf-8").splitlines()  # valid UTF-8 throughout
    assert sorted(json.loads(line)["image"] for line in lines) == sorted([str(odd), str(folder / "good.png")])
    # the JSON escape gives the very name back: the captions file is training data as it is
    assert {record.image for record in read_records(out)} == {odd, folder / "good.png"}

    assert cli(["visual", "caption", str(folder), "--checkpoint", str(run)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 2 and printed[0].startswith(f"{folder}/caf\\xff.png\t")


# -- item 16: the too-many-pixels message names an option that exists --------------------------------

def test_max_pixels_is_an_option_of_the_commands_that_read_images(shapes, run, tmp_path, capsys):
    picture = read_records(shapes / "heldout.jsonl")[0].image  # 64 x 64 = 4096 pixels
    assert cli(["visual", "caption", str(picture), "--checkpoint", str(run), "--max-pixels", "4000"]) == 1
    err = capsys.readouterr().err
    assert "over the limit of 4,000" in err and "--max-pixels" in err
    assert cli(["visual", "caption", str(picture), "--checkpoint", str(run), "--max-pixels", "4096"]) == 0
    capsys.readouterr()
    assert cli(["visual", "eval", "--checkpoint", str(run), "--data", str(shapes / "heldout.jsonl"),
                "--out", str(tmp_path), "--max-pixels", "4000"]) == 1
    assert "--max-pixels" in capsys.readouterr().err
    assert cli(["visual", "train", "--config", str(write_config(tmp_path)), "--data", str(shapes / "train.jsonl"),
                "--out", str(tmp_path / "run"), "--random-encoder", "--max-pixels", "4000"]) == 1
    err = capsys.readouterr().err
    assert "none of its 8 images can be read" in err and "--max-pixels" in err


# -- item 9: numeric options are checked when the command line is parsed --------------------------------

@pytest.mark.parametrize("argv, option", [
    (["caption", "x.png", "--checkpoint", "r", "--batch-size", "0"], "--batch-size"),
    (["caption", "x.png", "--checkpoint", "r", "--max-tokens", "-5"], "--max-tokens"),
    (["caption", "x.png", "--checkpoint", "r", "--max-pixels", "0"], "--max-pixels"),
    (["shapes", "--out", "o", "--train", "-1"], "--train"),
    (["shapes", "--out", "o", "--heldout", "-1"], "--heldout"),
    (["shapes", "--out", "o", "--size", "0"], "--size"),
    (["shapes", "--out", "o", "--size", "32"], "--size"),  # three shapes must fit in a cell
    (["prepare", "--out", "o", "--size", "0"], "--size"),
    (["prepare", "--out", "o", "--limit", "0"], "--limit"),
    (["clip-train", "--data", "d", "--out", "o", "--steps", "0"], "--steps"),
    (["clip-train", "--data", "d", "--out", "o", "--batch-size", "1"], "--batch-size"),  # contrastive: >= 2
    (["clip-train", "--data", "d", "--out", "o", "--lr", "0"], "--lr"),
    (["clip-train", "--data", "d", "--out", "o", "--lr", "-0.001"], "--lr"),
    (["clip-train", "--data", "d", "--out", "o", "--lr", "nan"], "--lr"),
    (["clip-train", "--data", "d", "--out", "o", "--steps", "ten"], "--steps"),
    (["clip-train", "--data", "d", "--out", "o", "--seed", "-1"], "--seed"),
    (["train", "--config", "c", "--data", "d", "--out", "o", "--max-pixels", "-1"], "--max-pixels"),
    (["eval", "--checkpoint", "r", "--data", "d", "--max-pixels", "0"], "--max-pixels"),
])
def test_bad_numeric_options_are_usage_errors(argv, option, capsys):
    with pytest.raises(SystemExit) as exit:
        cli(["visual", *argv])
    assert exit.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and f"argument {option}: " in errors[0]


def test_lora_mode_is_refused_before_anything_is_read(tmp_path):
    config = write_config(tmp_path, train_mode="lora")
    with pytest.raises(ValueError, match="train_mode \"lora\" is for text and music runs"):
        train_visual(config, tmp_path / "no-such-data.jsonl", tmp_path / "run")
    assert not (tmp_path / "run").exists()
