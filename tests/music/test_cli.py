"""`eaglefinch music ...`: bad numbers and outputs are usage errors when the command line is parsed."""
import pytest

from eaglefinch.cli import main as cli


@pytest.mark.parametrize("argv, option", [
    (["prepare", "--out", "o", "--transpose", "99"], "--transpose"),
    (["prepare", "--out", "o", "--tempo", "0"], "--tempo"),
    (["prepare", "--out", "o", "--val-fraction", "1.5"], "--val-fraction"),
    (["prepare", "--out", "missing/folder/o"], "--out"),
    (["generate", "--checkpoint", "r", "--out", "s.mid", "--seconds", "-5"], "--seconds"),
    (["generate", "--checkpoint", "r", "--out", "s.mid", "--seconds", "inf"], "--seconds"),
    (["generate", "--checkpoint", "r", "--out", "missing/s.mid"], "--out"),
    (["generate", "--checkpoint", "r", "--out", "s.mid", "--audio", "missing/s.wav"], "--audio"),
    (["continue", "in.mid", "--checkpoint", "r", "--out", "missing/s.mid"], "--out"),
    (["continue", "in.mid", "--checkpoint", "r", "--out", "s.mid", "--seconds", "0"], "--seconds"),
    (["render", "in.mid", "missing/out.wav"], "OUT.wav"),
    (["long-eval", "--checkpoint", "r", "--data", "d", "--windows", "0"], "--windows"),
    (["long-eval", "--checkpoint", "r", "--data", "d", "--segment", "-1"], "--segment"),
    (["eval", "--checkpoint", "r", "--data", "d", "--batch-size", "0"], "--batch-size"),
    (["eval", "--checkpoint", "r", "--data", "d", "--max-tokens", "-1"], "--max-tokens"),
    (["eval", "--checkpoint", "r", "--data", "d", "--samples", "0"], "--samples"),
    (["abc", "--config", "abc-tiny", "--out", "o", "--max-steps", "0"], "--max-steps"),
    (["abc", "--config", "abc-tiny", "--out", "o", "--seed", "-2"], "--seed"),
])
def test_bad_numeric_options_are_usage_errors(argv, option, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit:
        cli(["music", *argv])
    assert exit.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and f"argument {option}: " in errors[0]
