"""`eaglefinch text generate/chat` end to end on a small random World-vocabulary model."""
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from eaglefinch.cli import main
from eaglefinch.rwkv_core import RWKV, RWKVConfig, RWKVState, load_model, save_model
from eaglefinch.rwkv_core.data import ShardWriter
from eaglefinch.text.prepare import prepare
from eaglefinch.text.tokenizer import WorldTokenizer

ROOT = Path(__file__).resolve().parents[2]
TINY = dict(arch="finch", n_layer=2, n_embd=32, head_size=16, mix_lora_dim=4, decay_lora_dim=8)


@pytest.fixture(scope="module")
def checkpoint(tiny_world_checkpoint):
    return tiny_world_checkpoint


def test_generate_streams_and_seed_reproduces(checkpoint, capsys, tmp_path):
    args = ["text", "generate", "--checkpoint", str(checkpoint), "--prompt", "Hello 你好", "--max-tokens", "12",
            "--seed", "7", "--top-p", "1.0"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert main(args + ["--save-state", str(tmp_path / "s.safetensors")]) == 0
    assert capsys.readouterr().out == first and first.startswith("Hello 你好")
    assert main(["text", "generate", "--checkpoint", str(checkpoint), "--prompt", "x", "--max-tokens", "3",
                 "--load-state", str(tmp_path / "s.safetensors")]) == 0


def test_chat_reads_turns_from_stdin(checkpoint):
    proc = subprocess.run([sys.executable, "-m", "eaglefinch", "text", "chat", "--checkpoint", str(checkpoint),
                           "--max-tokens", "5", "--seed", "1"], input="Hi\nHow are you?\n", capture_output=True,
                          text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("Assistant:") == 2


def test_bad_arguments_give_one_line(checkpoint, capsys, tmp_path):
    code = main(["text", "generate", "--checkpoint", str(checkpoint), "--prompt", "x",
                 "--load-state", str(tmp_path / "missing.safetensors")])
    err = capsys.readouterr().err
    assert code != 0 and err.count("\n") == 1 and "not a saved RWKV state" in err


def run_chat(monkeypatch, checkpoint, stdin: bytes, *extra):
    """`eaglefinch text chat` in this process on `stdin` (bytes); its exit code."""
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8"))
    return main(["text", "chat", "--checkpoint", str(checkpoint), "--max-tokens", "4", "--seed", "1", *extra])


def test_chat_reports_a_line_that_is_not_utf8_and_goes_on(checkpoint, monkeypatch, capsys, tmp_path):
    state = tmp_path / "chat.safetensors"
    assert run_chat(monkeypatch, checkpoint, b"Hi\ncaf\xe9 latin-1\nBye\n", "--save-state", str(state)) == 0
    out, err = capsys.readouterr()
    assert out.count("Assistant:") == 2
    assert err.count("\n") == 1 and "line 2" in err and "UTF-8" in err
    assert RWKVState.load(state).batch_size == 1


def test_chat_saves_its_state_when_interrupted(checkpoint, monkeypatch, capsys, tmp_path):
    from eaglefinch.text.chat import ChatSession
    asked = []
    real_ask = ChatSession.ask

    def ask_then_interrupt(self, message, on_text=None):
        if asked:
            raise KeyboardInterrupt
        asked.append(real_ask(self, message, on_text))
        return asked[-1]
    monkeypatch.setattr(ChatSession, "ask", ask_then_interrupt)
    state = tmp_path / "chat.safetensors"
    assert run_chat(monkeypatch, checkpoint, b"Hi\nHow are you?\n", "--save-state", str(state)) == 130
    assert RWKVState.load(state).batch_size == 1  # the state after the first turn
    # with no turn at all, the saved state is the model's initial one
    assert run_chat(monkeypatch, checkpoint, b"\n", "--save-state", str(state)) == 0
    assert torch.count_nonzero(RWKVState.load(state).wkv) == 0


# -- mismatches are refused with one line ---------------------------------------------------------------

def one_error_line(capsys) -> str:
    """The error line of a failed command; nothing else on stderr but progress bars."""
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("eaglefinch: error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


def test_generate_refuses_a_music_run(checkpoint, tmp_path, capsys):
    music_run = tmp_path / "music_run"
    music_run.mkdir()
    save_model(load_model(checkpoint), music_run / "model.safetensors")
    (music_run / "config.json").write_text(json.dumps({"domain": "music", "train": {}, "music": {}}))
    assert main(["text", "generate", "--checkpoint", str(music_run), "--prompt", "x", "--max-tokens", "2"]) == 1
    assert "a music run, not a text one" in one_error_line(capsys)


def test_a_vocab_subset_of_another_length_than_the_model_is_refused(tmp_path, capsys):
    torch.manual_seed(0)
    save_model(RWKV(RWKVConfig(**TINY, vocab_size=300)), tmp_path / "model.safetensors")
    (tmp_path / "vocab_subset.json").write_text(json.dumps({"world_ids": list(range(258))}))
    assert main(["text", "generate", "--checkpoint", str(tmp_path), "--prompt", "x", "--max-tokens", "2"]) == 1
    assert "vocab_subset.json lists 258 ids but the model has 300 outputs" in one_error_line(capsys)


@pytest.fixture(scope="module")
def english_data(tmp_path_factory):
    """Prepared World-tokenised shards: the ids go far beyond 1000."""
    root = tmp_path_factory.mktemp("english")
    (root / "a.txt").write_text("The quick brown fox jumps over the lazy dog. " * 40, encoding="utf-8")
    prepare([root / "a.txt"], root / "data", WorldTokenizer(), val_fraction=0.0, progress=False)
    return root / "data"


@pytest.fixture(scope="module")
def small_vocab_model(tmp_path_factory):
    """A bare model file with 1000 outputs (ctx_len 16, kept by .safetensors): the World tokenizer, but
    most World ids have no row."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("small") / "small.safetensors"
    save_model(RWKV(RWKVConfig(**TINY, vocab_size=1000, ctx_len=16)), path)
    return path


def test_shards_with_ids_beyond_the_vocabulary_are_refused(english_data, small_vocab_model, tmp_path, capsys):
    config = tmp_path / "ft.json"
    config.write_text(json.dumps({"train": {"max_steps": 1, "batch_size": 2, "ctx_len": 16}}))
    assert main(["text", "train", "--config", str(config), "--data", str(english_data), "--out", str(tmp_path / "ft"),
                 "--init", str(small_vocab_model)]) == 1
    err = one_error_line(capsys)
    assert str(english_data) in err and "only 1000 outputs" in err
    assert main(["text", "eval", "--checkpoint", str(small_vocab_model), "--data", str(english_data),
                 "--split", "train", "--out", str(tmp_path)]) == 1
    err = one_error_line(capsys)
    assert "1000 outputs" in err
    assert not (tmp_path / "ft").exists() and not (tmp_path / "eval.json").exists()
    # shards whose ids all have a row are fine
    with ShardWriter(tmp_path / "small_ids", "train", shard_tokens=500) as writer:
        for start in range(0, 990, 10):
            writer.add(list(range(start + 1, start + 10)))
    assert main(["text", "train", "--config", str(config), "--data", str(tmp_path / "small_ids"),
                 "--out", str(tmp_path / "ft"), "--init", str(small_vocab_model)]) == 0
    assert main(["text", "eval", "--checkpoint", str(tmp_path / "ft"), "--data", str(tmp_path / "small_ids"),
                 "--split", "train", "--max-tokens", "64"]) == 0


# -- numeric options and output paths are checked when the command line is parsed ----------------------

def usage_error(argv, capsys) -> str:
    """The one error line of argparse's usage error (exit 2) for `argv`."""
    with pytest.raises(SystemExit) as exit:
        main(argv)
    assert exit.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1, errors
    return errors[0]


GENERATE = ["text", "generate", "--checkpoint", "c.pth", "--prompt", "x"]
CHAT = ["text", "chat", "--checkpoint", "c.pth"]
EVAL = ["text", "eval", "--checkpoint", "c.pth", "--data", "d"]
TRAIN = ["text", "train", "--config", "text-tiny", "--data", "d", "--out", "run"]
PREPARE = ["text", "prepare", "a.txt", "--out", "data"]


@pytest.mark.parametrize("argv, option", [
    (GENERATE + ["--max-tokens", "-5"], "--max-tokens"),
    (GENERATE + ["--max-tokens", "0"], "--max-tokens"),
    (GENERATE + ["--max-tokens", "ten"], "--max-tokens"),
    (GENERATE + ["--temperature", "inf"], "--temperature"),
    (GENERATE + ["--temperature", "nan"], "--temperature"),
    (GENERATE + ["--temperature", "-1"], "--temperature"),
    (GENERATE + ["--top-p", "1.5"], "--top-p"),
    (GENERATE + ["--top-p", "-0.1"], "--top-p"),
    (GENERATE + ["--top-k", "-1"], "--top-k"),
    (GENERATE + ["--presence-penalty", "inf"], "--presence-penalty"),
    (GENERATE + ["--frequency-penalty", "nan"], "--frequency-penalty"),
    (GENERATE + ["--penalty-decay", "0"], "--penalty-decay"),
    (GENERATE + ["--penalty-decay", "1.5"], "--penalty-decay"),
    (GENERATE + ["--seed", "-1"], "--seed"),
    (GENERATE + ["--seed", str(2 ** 64)], "--seed"),
    (CHAT + ["--max-tokens", "-5"], "--max-tokens"),
    (CHAT + ["--temperature", "inf"], "--temperature"),
    (EVAL + ["--batch-size", "0"], "--batch-size"),
    (EVAL + ["--max-len", "0"], "--max-len"),
    (EVAL + ["--max-tokens", "-1"], "--max-tokens"),
    (TRAIN + ["--max-steps", "0"], "--max-steps"),
    (TRAIN + ["--seed", "-3"], "--seed"),
    (PREPARE + ["--val-fraction", "1.5"], "--val-fraction"),
    (PREPARE + ["--val-fraction", "nan"], "--val-fraction"),
    (["music", "generate", "--checkpoint", "r", "--out", "a.mid", "--temperature", "inf"], "--temperature"),
    (["music", "train", "--config", "c", "--data", "d", "--out", "o", "--max-steps", "-1"], "--max-steps"),
    (["visual", "caption", "x.png", "--checkpoint", "r", "--top-p", "2"], "--top-p"),
])
def test_bad_numeric_options_are_usage_errors(argv, option, capsys):
    assert f"argument {option}: " in usage_error(argv, capsys)


@pytest.mark.parametrize("argv, option", [
    (GENERATE + ["--save-state", "{missing}/s.safetensors"], "--save-state"),
    (CHAT + ["--save-state", "{missing}/s.safetensors"], "--save-state"),
    (EVAL + ["--out", "{missing}/eval"], "--out"),
    (["text", "train", "--config", "text-tiny", "--data", "d", "--out", "{missing}/run"], "--out"),
    (["text", "prepare", "a.txt", "--out", "{missing}/data"], "--out"),
])
def test_outputs_in_a_missing_folder_are_refused_and_no_folder_is_made(argv, option, tmp_path, capsys):
    error = usage_error([a.format(missing=tmp_path / "no" / "such") for a in argv], capsys)
    assert f"argument {option}: " in error and "does not exist" in error
    assert not (tmp_path / "no").exists()


# -- prompts: escapes, a file, stdin -------------------------------------------------------------------

CHAT_PROMPT = "User: Hi\n\nAssistant:"


def test_prompt_escapes_a_prompt_file_and_stdin_give_the_same_prompt(checkpoint, tmp_path, monkeypatch, capsys):
    generate = ["text", "generate", "--checkpoint", str(checkpoint), "--max-tokens", "6", "--seed", "3"]
    assert main(generate + ["--prompt", r"User: Hi\n\nAssistant:"]) == 0  # what the shell passes for "...\n..."
    escaped = capsys.readouterr().out
    assert escaped.startswith(CHAT_PROMPT)
    (tmp_path / "prompt.txt").write_text(CHAT_PROMPT, encoding="utf-8")
    assert main(generate + ["--prompt-file", str(tmp_path / "prompt.txt")]) == 0
    assert capsys.readouterr().out == escaped
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(CHAT_PROMPT.encode()), encoding="utf-8"))
    assert main(generate + ["--prompt", "-"]) == 0
    assert capsys.readouterr().out == escaped


def test_prompt_and_stop_take_escapes():
    from eaglefinch.cli import build_parser
    args = build_parser().parse_args(["text", "generate", "--checkpoint", "c", "--prompt", r"a\\n\tb \u00e9 ü",
                                      "--stop", r"\n\n", "--stop", "plain"])
    assert args.prompt == "a\\n\tb é ü" and args.stop == ["\n\n", "plain"]


def test_a_prompt_file_beyond_the_argument_limit(checkpoint, tmp_path, capsys):
    prompt = "Rules:\n" + "-" * 80 * 1800 + "\n"   # 144 kB (one argument may have 128 KiB), 1,802 tokens
    (tmp_path / "long.txt").write_text(prompt, encoding="utf-8")
    assert main(["text", "generate", "--checkpoint", str(checkpoint), "--prompt-file", str(tmp_path / "long.txt"),
                 "--max-tokens", "1"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith(prompt) and "reading the prompt" in err  # a progress bar while it is read


@pytest.mark.parametrize("argv, message", [
    (["--prompt-file", "{tmp}/latin1.txt"], "latin1.txt: not UTF-8 text (byte 0xe9 at 3)"),
    (["--prompt-file", "{tmp}/missing.txt"], "missing.txt"),
])
def test_a_bad_prompt_file_gives_one_line(checkpoint, tmp_path, capsys, argv, message):
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    assert main(["text", "generate", "--checkpoint", str(checkpoint),
                 *[a.format(tmp=tmp_path) for a in argv]]) == 1
    assert message in one_error_line(capsys)


@pytest.mark.parametrize("argv, option", [
    (["--prompt", "x", "--prompt-file", "p.txt"], "--prompt-file"),
    (["--prompt", "ends in a backslash\\"], "--prompt"),
    (["--prompt", "x", "--stop", r"\x4"], "--stop"),
    ([], "--prompt"),
])
def test_bad_prompt_options_are_usage_errors(argv, option, capsys):
    assert option in usage_error(["text", "generate", "--checkpoint", "c.pth", *argv], capsys)


def test_a_state_of_another_model_is_refused(checkpoint, tmp_path, capsys):
    other = RWKV(RWKVConfig(**{**TINY, "n_layer": 3}))
    other.initial_state(1).save(tmp_path / "other.safetensors")
    assert main(["text", "generate", "--checkpoint", str(checkpoint), "--prompt", "x", "--max-tokens", "2",
                 "--load-state", str(tmp_path / "other.safetensors")]) == 1
    assert "a state of another model" in one_error_line(capsys)
