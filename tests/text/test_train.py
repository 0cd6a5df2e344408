"""text.train: fine-tuning (--init) from a run folder, its model.safetensors and an official .pth,
into a new folder or the run itself; vocabularies that do not cover the corpus are refused before
anything is written."""
import json

import pytest
import torch

from eaglefinch.cli import main
from eaglefinch.rwkv_core import RWKV, RWKVConfig, load_model, save_model
from eaglefinch.rwkv_core.run import read_metrics
from eaglefinch.text.prepare import prepare
from eaglefinch.text.run import TextRun
from eaglefinch.text.tokenizer import WorldTokenizer
from eaglefinch.text.train import train_text

TINY_MODEL = {"arch": "finch", "n_layer": 1, "n_embd": 32, "head_size": 16, "mix_lora_dim": 4, "decay_lora_dim": 8}
TINY_TRAIN = {"max_steps": 2, "batch_size": 2, "ctx_len": 16, "warmup_steps": 1, "val_every": 1000,
              "save_every": 1000, "log_every": 1}


def write_corpus(folder, text, copies=40):
    """A prepared corpus (train and val shards) of `copies` documents of `text`."""
    with open(folder / "docs.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"text": f"{i}: {text}"}) + "\n" for i in range(copies))
    prepare([folder / "docs.jsonl"], folder / "data", WorldTokenizer(), val_fraction=0.2, progress=False)
    return folder / "data"


def write_config(path, trim_vocab=True, with_model=True):
    config = {"train": TINY_TRAIN, "text": {"trim_vocab": trim_vocab}}
    if with_model:
        config["model"] = TINY_MODEL
    path.write_text(json.dumps(config))
    return path


@pytest.fixture(scope="module")
def english(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("english"), "The cat sat on the mat and looked at the bird.")


@pytest.fixture(scope="module")
def chinese(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("chinese"), "猫坐在垫子上看着鸟。今天天气很好。")


@pytest.fixture
def trimmed_run(tmp_path, english):
    """A tiny run with a trimmed vocabulary, trained 2 steps on the English corpus."""
    train_text(write_config(tmp_path / "new.json"), english, tmp_path / "run", progress=False)
    return tmp_path / "run"


def run_files(run):
    """{file name: bytes} of a run folder."""
    return {p.name: p.read_bytes() for p in sorted(run.iterdir()) if p.is_file()}


def finetune(tmp_path, init, data, out, extra=()):
    """`eaglefinch text train --init` with a config that has no model section; the exit code."""
    config = write_config(tmp_path / "ft.json", with_model=False)
    return main(["text", "train", "--config", str(config), "--data", str(data), "--out", str(out),
                 "--init", str(init), *extra])


@pytest.mark.parametrize("init", ["folder", "model.safetensors"])
def test_finetune_a_trimmed_run_from_its_folder_or_model_file(tmp_path, trimmed_run, english, init):
    source = trimmed_run if init == "folder" else trimmed_run / "model.safetensors"
    assert finetune(tmp_path, source, english, tmp_path / "ft") == 0
    assert (tmp_path / "ft" / "vocab_subset.json").read_bytes() == (trimmed_run / "vocab_subset.json").read_bytes()
    model, tokenizer = TextRun.open(tmp_path / "ft").load()
    before, _ = TextRun.open(trimmed_run).load()
    assert model.cfg == before.cfg and tokenizer.vocab_size == model.cfg.vocab_size
    assert not torch.equal(model.emb.weight, before.emb.weight)  # it trained


def test_finetune_into_the_run_itself_keeps_its_vocabulary(tmp_path, trimmed_run, english):
    vocab = (trimmed_run / "vocab_subset.json").read_bytes()
    assert finetune(tmp_path, trimmed_run, english, trimmed_run) == 0
    assert (trimmed_run / "vocab_subset.json").read_bytes() == vocab
    model, tokenizer = TextRun.open(trimmed_run).load()
    assert tokenizer.vocab_size == model.cfg.vocab_size < 65536
    # and resumes from there, with or without --init
    assert finetune(tmp_path, trimmed_run, english, trimmed_run, ["--resume", "--max-steps", "3"]) == 0
    config = write_config(tmp_path / "ft.json", with_model=False)
    assert main(["text", "train", "--config", str(config), "--data", str(english), "--out", str(trimmed_run),
                 "--resume", "--max-steps", "4"]) == 0
    assert [r["step"] for r in read_metrics(trimmed_run / "metrics.jsonl")][-1] == 4


def test_finetune_an_official_pth(tmp_path, english):
    torch.manual_seed(0)
    save_model(RWKV(RWKVConfig(**TINY_MODEL)), tmp_path / "official.pth")
    (tmp_path / "vocab_subset.json").write_text("not read: a .pth is a bare model with the World vocabulary")
    assert finetune(tmp_path, tmp_path / "official.pth", english, tmp_path / "ft") == 0
    assert not (tmp_path / "ft" / "vocab_subset.json").exists()
    model, tokenizer = TextRun.open(tmp_path / "ft").load()
    assert model.cfg.vocab_size == tokenizer.vocab_size == 65536


def test_lora_fine_tune_of_an_official_pth_generates_alike_unmerged_and_merged(tmp_path, english, capsys):
    """`text train` in LoRA mode from an official .pth: the run (base plus adapters), the .pth with
    --adapters and the merged .pth generate the same text; a LoRA fine-tune of that run into itself
    starts from the merged model."""
    torch.manual_seed(0)
    official = RWKV(RWKVConfig(**TINY_MODEL))
    with torch.no_grad():  # off the official init (it zeroes several matrices)
        for p in official.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    save_model(official, tmp_path / "official.pth")
    config = tmp_path / "lora.json"
    config.write_text(json.dumps({"train": {**TINY_TRAIN, "train_mode": "lora", "lora_rank": 2, "lr_init": 0.05,
                                            "lora_init": "pissa"}, "text": {}}))
    run = tmp_path / "ft"
    assert main(["text", "train", "--config", str(config), "--data", str(english), "--out", str(run),
                 "--init", str(tmp_path / "official.pth")]) == 0
    assert json.loads((run / "config.json").read_text())["train"]["train_mode"] == "lora"
    base = TextRun.open(tmp_path / "official.pth").load()[0].state_dict()
    assert all(torch.equal(v, base[k]) for k, v in load_model(run / "model.safetensors").state_dict().items())
    assert main(["merge", "--checkpoint", str(run), "--out", str(tmp_path / "merged.pth")]) == 0
    capsys.readouterr()

    def generated(*checkpoint):
        assert main(["text", "generate", *checkpoint, "--prompt", "The cat", "--max-tokens", "12",
                     "--temperature", "0"]) == 0
        return capsys.readouterr().out

    unmerged = generated("--checkpoint", str(run))
    assert generated("--checkpoint", str(tmp_path / "official.pth"), "--adapters", str(run / "adapters.safetensors")) \
        == unmerged == generated("--checkpoint", str(tmp_path / "merged.pth"))
    assert unmerged != generated("--checkpoint", str(tmp_path / "official.pth"))   # it trained
    # again into the run itself: the old adapters are merged into the new base
    assert main(["text", "train", "--config", str(config), "--data", str(english), "--out", str(run),
                 "--init", str(run)]) == 0
    merged = load_model(tmp_path / "merged.pth").state_dict()
    assert all(torch.allclose(v, merged[k], atol=1e-6) for k, v in load_model(run / "model.safetensors").state_dict().items())


def test_a_corpus_outside_the_trimmed_vocabulary_is_refused_before_anything_is_written(tmp_path, trimmed_run,
                                                                                       chinese, capsys):
    before = run_files(trimmed_run)
    for out in (tmp_path / "ft", trimmed_run):
        assert finetune(tmp_path, trimmed_run, chinese, out) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "trimmed vocabulary" in err and str(chinese) in err
    assert not (tmp_path / "ft").exists()
    assert run_files(trimmed_run) == before


def test_an_interrupted_finetune_leaves_the_run_in_out_as_it_was(tmp_path, trimmed_run, english, monkeypatch):
    """Fine-tuning an official .pth (full vocabulary) into a trimmed run's folder, killed in its first
    step: the run still has its model, config and vocabulary (the trainer's metrics.jsonl aside)."""
    torch.manual_seed(0)
    save_model(RWKV(RWKVConfig(**TINY_MODEL)), tmp_path / "official.pth")
    before = run_files(trimmed_run)

    def killed(self, loss):
        raise KeyboardInterrupt
    monkeypatch.setattr("eaglefinch.rwkv_core.train.LocalProcess.backward", killed)
    with pytest.raises(KeyboardInterrupt):
        train_text(write_config(tmp_path / "ft.json", with_model=False), english, trimmed_run,
                   init=tmp_path / "official.pth", progress=False)
    after = run_files(trimmed_run)
    assert {k: v for k, v in after.items() if k != "metrics.jsonl"} == \
           {k: v for k, v in before.items() if k != "metrics.jsonl"}
    TextRun.open(trimmed_run).load()
