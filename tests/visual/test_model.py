"""VisualRWKV wired on the backbone: bidirectional scan, stages, state-carried decoding, runs, CLI."""
import json
import signal
import subprocess
import sys
import time

import pytest
import torch

from eaglefinch.cli import main as cli
from eaglefinch.rwkv_core import RWKV, RWKVConfig, save_model
from eaglefinch.rwkv_core.train import TrainConfig, param_groups, rank_batch, train
from eaglefinch.text.subset import SubsetTokenizer
from eaglefinch.text.tokenizer import WorldTokenizer
from eaglefinch.visual.caption import answer, answer_ids, caption_files, prompt_ids
from eaglefinch.visual.data import VisualDataset, read_records
from eaglefinch.visual.encoder import VisionEncoder
from eaglefinch.visual.model import VisualConfig, VisualRWKV
from eaglefinch.visual.run import VisualRun
from eaglefinch.visual.shapes import make_splits, render, write_shapes_dataset
from eaglefinch.visual.train import VisualBatches, VisualTask, vocabulary_of

TINY_CONFIG = {
    "model": {"arch": "finch", "n_layer": 2, "n_embd": 64, "head_size": 32, "vocab_size": 65536,
              "mix_lora_dim": 8, "decay_lora_dim": 16, "ctx_len": 64},
    "train": {"max_steps": 2, "batch_size": 4, "ctx_len": 64, "lr_init": 3e-3, "lr_final": 3e-4,
              "warmup_steps": 1, "val_every": 2, "val_batches": 1, "save_every": 2},
    "visual": {"pool": 2, "projector": "mlp", "trim_vocab": True},
}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    write_shapes_dataset(root, n_train=12, n_heldout=4, seed=1)
    return root


def random_vlm(records, bidirectional=True, cls_token=True, n_layer=3):
    """A VisualRWKV with every weight perturbed, so no part of it is a no-op (zero-initialised outputs)."""
    torch.manual_seed(0)
    cfg = VisualConfig(pool=2, cls_token=cls_token, projector="mlp", bidirectional=bidirectional)
    encoder = VisionEncoder(cfg.encoder, random_init=True, pool=cfg.pool, cls_token=cls_token)
    world = WorldTokenizer()
    ids = vocabulary_of(records, world, encoder.n_tokens, cfg.image_position)
    model = RWKV(RWKVConfig(arch="finch", n_layer=n_layer, n_embd=64, head_size=32, vocab_size=len(ids),
                            mix_lora_dim=8, decay_lora_dim=16))
    vlm = VisualRWKV(model, encoder, cfg)
    with torch.no_grad():
        for p in list(vlm.model.parameters()) + list(vlm.projector.parameters()):
            p.add_(torch.randn_like(p) * 0.2)
    return vlm.eval(), SubsetTokenizer(world, ids)


def images(n, size=64):
    return [render(scene) for scene in make_splits(n, 0, seed=3, size=size)[0]]


def test_state_carried_decoding_equals_full_recomputation(shapes):
    vlm, tokenizer = random_vlm(read_records(shapes / "train.jsonl"))
    pics = images(2)
    generated = answer_ids(vlm, tokenizer, pics, max_tokens=6)
    layout = prompt_ids(vlm, tokenizer)
    pixels = torch.stack([vlm.encoder.preprocess(p) for p in pics])
    P = len(layout.ids)
    with torch.no_grad():
        for b, tokens in enumerate(generated):
            assert tokens, "the random model stopped at once; nothing to compare"
            full = torch.tensor([layout.ids + tokens])
            logits_full, _ = vlm(full, pixels[b:b + 1], [layout.image_span])
            # greedy decoding with the state carried picked what recomputing everything picks
            assert logits_full[0, P - 1:P - 1 + len(tokens)].argmax(-1).tolist() == tokens
            # and the logits themselves agree, step by step
            logits, state = vlm(full[:, :P], pixels[b:b + 1], [layout.image_span])
            steps = [logits[:, -1]]
            for t in range(len(tokens) - 1):
                logits, state = vlm.model(full[:, P + t:P + t + 1], state)
                steps.append(logits[:, -1])
            torch.testing.assert_close(torch.cat(steps), logits_full[0, P - 1:P - 1 + len(tokens)], atol=1e-5, rtol=1e-5)


def test_bidirectional_scan_reverses_the_patches_in_odd_blocks_with_the_class_token_outside(shapes):
    records = read_records(shapes / "train.jsonl")
    vlm, tokenizer = random_vlm(records)
    layout = prompt_ids(vlm, tokenizer)
    start, end = layout.image_span
    assert end - start == vlm.n_image_tokens == 17  # 4 x 4 pooled patches + the class token
    assert vlm.scan_spans([(start, end), (0, 0)]) == [(start, end - 1), (0, 0)]
    pixels = torch.stack([vlm.encoder.preprocess(p) for p in images(1)])
    inputs = torch.tensor([layout.ids])
    with torch.no_grad():
        ours, _ = vlm(inputs, pixels, [layout.image_span])
        # the definition, written out: splice, then odd blocks flip the patch positions around the block
        x = vlm.model.emb(inputs)
        x[0, start:end] = vlm.projector(vlm.encoder(pixels))[0]
        x = vlm.model.blocks[0].ln0(x)
        s = vlm.model.initial_state(1)
        flip = lambda h: torch.cat([h[:, :start], h[:, start:end - 1].flip(1), h[:, end - 1:]], 1)  # noqa: E731
        for i, block in enumerate(vlm.model.blocks):
            x = flip(x) if i % 2 else x
            x = block(x, s.att_shift[i], s.wkv[i], s.ffn_shift[i])[0]
            x = flip(x) if i % 2 else x
        reference = vlm.model.head(vlm.model.ln_out(x))
        vlm.cfg.bidirectional = False
        one_way, _ = vlm(inputs, pixels, [layout.image_span])
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(ours[:, end:], one_way[:, end:], atol=1e-3)
    torch.testing.assert_close(ours[:, :start], one_way[:, :start])  # nothing before the image changes


@pytest.mark.parametrize("stage", [1, 2])
def test_frozen_parts_receive_no_gradient_and_the_trainer_updates_the_projector(shapes, tmp_path, stage):
    records = read_records(shapes / "train.jsonl")
    vlm, tokenizer = random_vlm(records, n_layer=2)
    vlm.set_stage(stage)
    task = VisualTask(vlm)
    data = VisualBatches(VisualDataset(records, vlm.encoder.preprocess, tokenizer.encode, vlm.n_image_tokens))
    task(data.sample_batch(4, 64, torch.Generator().manual_seed(0))).backward()
    assert all(p.grad is None for p in vlm.encoder.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in vlm.projector.parameters())
    model_grads = [p.grad for p in vlm.model.parameters()]
    assert all(g is None for g in model_grads) if stage == 1 else sum(g is not None for g in model_grads) > 0
    # the shared trainer optimises exactly the trainable parameters, the projector's included
    trained = {id(p) for group in param_groups(task, TrainConfig()) for p in group["params"]}
    assert trained == {id(p) for p in task.parameters() if p.requires_grad}
    task.zero_grad(set_to_none=True)
    before = {k: v.clone() for k, v in task.state_dict().items()}
    train(task, TrainConfig(max_steps=2, batch_size=4, ctx_len=64, warmup_steps=1, save_every=2), data, tmp_path,
          progress=False)
    after = task.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("vlm.projector.") for k in changed)
    assert not any(k.startswith("vlm.encoder.") for k in changed)
    assert any(k.startswith("vlm.model.") for k in changed) == (stage == 2)


def test_each_rank_reads_only_its_share_of_the_global_batch(shapes, monkeypatch):
    """Two processes' batches are the samples of one process's batch, in rank order, and each reads
    only its own images (`train.rank_batch` through `sample_indices` / `batch_at`)."""
    records = read_records(shapes / "train.jsonl")
    vlm, tokenizer = random_vlm(records, n_layer=1)
    data = VisualBatches(VisualDataset(records, vlm.encoder.preprocess, tokenizer.encode, vlm.n_image_tokens))
    cfg = TrainConfig(batch_size=3, ctx_len=64)
    whole = rank_batch(data, TrainConfig(batch_size=6, ctx_len=64), torch.Generator().manual_seed(3))
    parts = [rank_batch(data, cfg, torch.Generator().manual_seed(3), rank, 2) for rank in (0, 1)]
    assert torch.equal(torch.cat([p.pixels for p in parts]), whole.pixels)
    assert [s for p in parts for s in p.image_spans] == list(whole.image_spans)
    for b, (part, row) in enumerate([(p, r) for p in parts for r in range(3)]):
        n = int(part.loss_mask[row].ne(0).nonzero().max()) + 1   # up to the last supervised token
        assert torch.equal(part.inputs[row, :n], whole.inputs[b, :n])
        assert torch.equal(part.loss_mask[row], whole.loss_mask[b, :part.loss_mask.shape[1]])
    reads, read = [], type(data.dataset).__getitem__
    monkeypatch.setattr(type(data.dataset), "__getitem__", lambda self, i: reads.append(i) or read(self, i))
    rank_batch(data, cfg, torch.Generator().manual_seed(3), 1, 2)
    assert len(reads) == 3                       # its own three samples' images, not all six


def test_batches_supervise_only_answers_and_carry_each_image_span(shapes):
    records = read_records(shapes / "train_qa.jsonl")
    vlm, tokenizer = random_vlm(records, n_layer=2)
    data = VisualBatches(VisualDataset(records, vlm.encoder.preprocess, tokenizer.encode, vlm.n_image_tokens))
    batch = data.batch_at([0, 1], ctx_len=200)
    inputs, targets, mask, pixels, spans = batch.inputs, batch.targets, batch.loss_mask, batch.pixels, batch.image_spans
    assert pixels.shape == (2, 3, 64, 64) and inputs.shape == targets.shape == mask.shape
    for b in range(2):
        start, end = spans[b]
        assert end - start == vlm.n_image_tokens and mask[b, start:end].sum() == 0
        answers = [records[b].turns[k][1] for k in range(len(records[b].turns))]
        supervised = tokenizer.decode(targets[b][mask[b] > 0].tolist())
        assert supervised == "".join(f" {a}\n\n" for a in answers)
    with pytest.raises(Exception, match="beyond ctx_len"):
        data.batch_at([0], ctx_len=10)


def write_config(tmp_path, **visual):
    cfg = json.loads(json.dumps(TINY_CONFIG))
    cfg["visual"].update(visual)
    path = tmp_path / "visual.json"
    path.write_text(json.dumps(cfg))
    return path


def test_cli_train_caption_eval_and_bad_inputs(shapes, tmp_path, capsys):
    config, run = write_config(tmp_path), tmp_path / "run"
    assert cli(["visual", "train", "--config", str(config), "--data", str(shapes / "train.jsonl"),
                "--val", str(shapes / "heldout.jsonl"), "--out", str(run), "--random-encoder"]) == 0
    for name in ("model.safetensors", "visual.json", "vocab_subset.json", "config.json", "loss.png"):
        assert (run / name).is_file(), name
    capsys.readouterr()

    # a folder with bad files: the good images are captioned, the bad ones reported
    folder = tmp_path / "mixed"
    folder.mkdir()
    for i, pic in enumerate(images(3)):
        pic.save(folder / f"good{i}.png")
    (folder / "bad.png").write_text("not an image")
    (folder / "empty.jpg").write_bytes(b"")
    assert cli(["visual", "caption", str(folder), "--checkpoint", str(run)]) == 0
    out, err = capsys.readouterr()
    assert sorted(line.split("\t")[0].rsplit("/", 1)[-1] for line in out.splitlines()) == ["good0.png", "good1.png", "good2.png"]
    assert "bad.png" in err and "empty.jpg" in err

    # only bad files: one error, exit 1, and no output file
    jsonl = tmp_path / "captions.jsonl"
    assert cli(["visual", "caption", str(folder / "bad.png"), "--checkpoint", str(run), "--out", str(jsonl)]) == 1
    assert "no image could be read" in capsys.readouterr().err and not jsonl.exists()
    assert cli(["visual", "caption", str(folder), "--checkpoint", str(run), "--out", str(jsonl)]) == 0
    assert len(jsonl.read_text().splitlines()) == 3

    assert cli(["visual", "eval", "--checkpoint", str(run), "--data", str(shapes / "heldout.jsonl"),
                "--out", str(tmp_path / "eval")]) == 0
    assert "exact-caption accuracy" in capsys.readouterr().out and (tmp_path / "eval" / "captions.png").is_file()

    # stage 2 continues from the stage-1-style run folder (encoder, projector, vocabulary reused)
    assert cli(["visual", "train", "--config", str(config), "--data", str(shapes / "train.jsonl"),
                "--out", str(tmp_path / "run2"), "--init", str(run), "--max-steps", "1"]) == 0

    # the offline path end to end: a small CLIP trained here gives the encoder its weights
    clip = tmp_path / "clip.pt"
    assert cli(["visual", "clip-train", "--data", str(shapes / "train.jsonl"), "--out", str(clip),
                "--steps", "2", "--batch-size", "8"]) == 0
    assert cli(["visual", "train", "--config", str(config), "--data", str(shapes / "train.jsonl"),
                "--out", str(tmp_path / "run_clip"), "--clip", str(clip), "--max-steps", "1", "--stage", "1"]) == 0
    assert "retrieval" in capsys.readouterr().out

    # no encoder weights named: one clear error
    capsys.readouterr()
    assert cli(["visual", "train", "--config", str(config), "--data", str(shapes / "train.jsonl"),
                "--out", str(tmp_path / "run3")]) == 1
    assert "--clip" in capsys.readouterr().err
    # a config without a model section and no --init model: one clear error
    no_model = tmp_path / "no_model.json"
    no_model.write_text(json.dumps({k: v for k, v in json.loads(config.read_text()).items() if k != "model"}))
    assert cli(["visual", "train", "--config", str(no_model), "--data", str(shapes / "train.jsonl"),
                "--out", str(tmp_path / "run4"), "--random-encoder"]) == 1
    assert 'no "model" section' in capsys.readouterr().err and not (tmp_path / "run4").exists()
    # a run whose weights file holds no projector, and a corrupt weights file: one clear error each
    save_model(random_vlm(read_records(shapes / "train.jsonl"), n_layer=2)[0].model, run / "model.safetensors")
    assert cli(["visual", "caption", str(folder / "good0.png"), "--checkpoint", str(run)]) == 1
    err = capsys.readouterr().err
    assert "visual projector weights do not fit" in err and len(err.strip().splitlines()) == 1
    (run / "model.safetensors").write_bytes(b"\x00" * 64)
    assert cli(["visual", "caption", str(folder / "good0.png"), "--checkpoint", str(run)]) == 1
    err = capsys.readouterr().err
    assert "model.safetensors" in err and len(err.strip().splitlines()) == 1


def test_answer_is_the_decoded_ids_and_files_match_images(shapes, tmp_path):
    vlm, tokenizer = random_vlm(read_records(shapes / "train.jsonl"), n_layer=2)
    pics = images(3)
    ids = answer_ids(vlm, tokenizer, pics, max_tokens=4)
    texts = answer(vlm, tokenizer, pics, max_tokens=4)
    assert texts == [tokenizer.decode(t).split("\n\n")[0].strip() for t in ids]
    for i, pic in enumerate(pics):
        pic.save(tmp_path / f"{i}.png")
    # batches of 2 over 3 files: the same captions as one batch of all three, in file order
    results, errors = caption_files(vlm, tokenizer, [tmp_path], batch_size=2, max_tokens=4)
    assert [(p.name, t) for p, t in results] == [(f"{i}.png", t) for i, t in enumerate(texts)] and errors == []


def test_resumed_visual_run_repeats_the_uninterrupted_losses(shapes, tmp_path):
    """Seeded end to end (weights, data order, schedule): stop at step 2, resume, same losses as one run."""
    from eaglefinch.rwkv_core.run import read_metrics
    from eaglefinch.visual.train import train_visual

    cfg = json.loads(json.dumps(TINY_CONFIG))
    cfg["train"].update(max_steps=4, save_every=2, log_every=1, val_every=100)
    config = tmp_path / "visual.json"
    config.write_text(json.dumps(cfg))
    data = shapes / "train.jsonl"
    train_visual(config, data, tmp_path / "a", random_encoder=True, progress=False)
    train_visual(config, data, tmp_path / "b", random_encoder=True, max_steps=2, progress=False)
    train_visual(config, data, tmp_path / "b", random_encoder=True, resume=True, progress=False)
    losses = [[r["loss"] for r in read_metrics(tmp_path / run / "metrics.jsonl") if "loss" in r] for run in "ab"]
    assert len(losses[0]) == 4 and losses[0] == losses[1]


def test_a_run_killed_after_its_first_checkpoint_captions_as_its_checkpoint(shapes, tmp_path):
    """SIGKILL right after the first checkpoint: `visual caption` opens the run, and its captions are
    those of the weights in checkpoint.pt (the inference files are written before the checkpoint)."""
    config, run = write_config(tmp_path), tmp_path / "run"
    cfg = json.loads(config.read_text())
    cfg["train"].update(max_steps=100_000, save_every=5, val_every=100_000)
    config.write_text(json.dumps(cfg))
    proc = subprocess.Popen([sys.executable, "-m", "eaglefinch", "visual", "train", "--config", str(config),
                             "--data", str(shapes / "train.jsonl"), "--out", str(run), "--random-encoder"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (run / "checkpoint.pt").exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()

    pics = images(3)
    for i, pic in enumerate(pics):
        pic.save(tmp_path / f"{i}.png")
    out = tmp_path / "captions.jsonl"
    assert cli(["visual", "caption", *(str(tmp_path / f"{i}.png") for i in range(3)), "--checkpoint", str(run),
                "--out", str(out)]) == 0
    captions = [json.loads(line)["caption"] for line in out.read_text().splitlines()]

    checkpoint = torch.load(run / "checkpoint.pt", weights_only=True)
    assert checkpoint["step"] == 5
    vlm, tokenizer = VisualRun.open(run).load()
    opened = VisualTask(vlm).state_dict()
    assert opened.keys() == checkpoint["task"].keys()
    assert all(torch.equal(opened[k], checkpoint["task"][k]) for k in opened)
    VisualTask(vlm).load_state_dict(checkpoint["task"])
    assert captions == answer(vlm, tokenizer, pics, max_tokens=60)
