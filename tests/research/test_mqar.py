"""MQAR: the data (every query's answer is the value paired with its key, checked against a plain
dictionary reading of each sequence), the accuracy measure, and the experiment through the CLI."""
import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from eaglefinch.cli import main
from eaglefinch.research import mqar
from eaglefinch.research.mqar import IGNORE, check_task, mqar_batch, query_accuracy
from tests.research.fixtures import one_thread  # noqa: F401  (a fixture)


def recall_by_reading(row, num_pairs):
    """The reference: read the pairs into a dict, then answer every later non-filler token from it."""
    row = row.tolist()
    pairs = dict(zip(row[0:2 * num_pairs:2], row[1:2 * num_pairs:2]))
    answers = [IGNORE] * len(row)
    for t in range(2 * num_pairs, len(row)):
        if row[t] != 0:
            answers[t] = pairs[row[t]]
    return pairs, answers


@settings(max_examples=60, deadline=None)
@given(num_pairs=st.integers(1, 12), extra=st.integers(0, 40), vocab=st.integers(3, 100), seed=st.integers(0, 2**31))
def test_every_query_answer_is_the_value_paired_with_its_key(num_pairs, extra, vocab, seed):
    num_pairs = min(num_pairs, (vocab - 1) // 2)
    seq_len = 3 * num_pairs + extra
    inputs, targets = mqar_batch(4, seq_len, num_pairs, vocab, torch.Generator().manual_seed(seed))
    assert inputs.shape == targets.shape == (4, seq_len)
    num_keys = (vocab - 1) // 2
    for row, target in zip(inputs, targets):
        pairs, answers = recall_by_reading(row, num_pairs)
        assert len(pairs) == num_pairs                                    # the keys are distinct
        assert all(1 <= k <= num_keys < v < vocab for k, v in pairs.items())
        queries = [t for t in row[2 * num_pairs:].tolist() if t != 0]
        assert sorted(queries) == sorted(pairs)                           # each key is asked once
        assert target.tolist() == answers


def test_a_seed_gives_the_same_batches():
    a = mqar_batch(8, 40, 5, 30, torch.Generator().manual_seed(3))
    b = mqar_batch(8, 40, 5, 30, torch.Generator().manual_seed(3))
    c = mqar_batch(8, 40, 5, 30, torch.Generator().manual_seed(4))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])


@pytest.mark.parametrize("seq_len, num_pairs, vocab, problem", [
    (20, 8, 30, "at least 24 tokens"), (30, 8, 15, "vocabulary of at least 17"), (30, 0, 15, "vocabulary")])
def test_impossible_tasks_are_refused(seq_len, num_pairs, vocab, problem):
    with pytest.raises(ValueError, match=problem):
        check_task(seq_len, num_pairs, vocab)


class Oracle(torch.nn.Module):
    """Logits that put all weight on the reference's answer (shifted by `offset` values: wrong ones)."""

    def __init__(self, num_pairs, vocab, offset=0):
        super().__init__()
        self.num_pairs, self.vocab, self.offset = num_pairs, vocab, offset

    def forward(self, inputs):
        logits = torch.zeros(*inputs.shape, self.vocab)
        for b, row in enumerate(inputs):
            for t, answer in enumerate(recall_by_reading(row, self.num_pairs)[1]):
                if answer != IGNORE:
                    logits[b, t, (answer + self.offset) % self.vocab] = 1.0
        return logits


def test_query_accuracy_counts_the_answer_positions_only():
    inputs, targets = mqar_batch(10, 30, 6, 40, torch.Generator().manual_seed(0))
    assert query_accuracy(Oracle(6, 40), inputs, targets, batch_size=3) == 1.0
    assert query_accuracy(Oracle(6, 40, offset=1), inputs, targets, batch_size=3) == 0.0


@pytest.mark.usefixtures("one_thread")
def test_the_experiment_writes_its_results_and_resumes(tmp_path, capsys, monkeypatch):
    out = tmp_path / "mqar"
    argv = ["research", "mqar", "--out", str(out), "--seeds", "2", "--steps", "2", "--lengths", "12,15",
            "--widths", "16", "--vocab", "16", "--test-sequences", "8"]
    code = main(argv)
    assert code == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    summary = results["results"]["summary"]
    assert {(s["arch"], s["seq_len"]) for s in summary} == {(a, T) for a in ("eagle", "finch", "transformer") for T in (12, 15)}
    assert all(0.0 <= s["accuracy_mean"] <= 1.0 and s["accuracy_std"] >= 0.0 for s in summary)
    assert len(results["results"]["runs"]) == 3 * 2 * 2
    assert results["results"]["pairs"] == {"12": 1, "15": 1}
    assert results["environment"]["seeds"] == 2 and results["plots"] == ["mqar_accuracy.png"]
    md = (out / "results.md").read_text()
    assert "| seq len | pairs | width | model | params | query accuracy |" in md and "![mqar_accuracy.png]" in md
    assert (out / "mqar_accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # started again (as after a time limit), every run is read back from out/runs/, none trained again
    monkeypatch.setattr(mqar, "train_recall", lambda *a: pytest.fail("a finished run was trained again"))
    assert main(argv) == 0, capsys.readouterr().err
    assert json.loads((out / "results.json").read_text())["results"]["runs"] == results["results"]["runs"]


def test_bad_options_are_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["research", "mqar", "--out", str(tmp_path), "--archs", "finch,mamba"])
    assert e.value.code == 2 and "unknown model mamba" in capsys.readouterr().err
    assert main(["research", "mqar", "--out", str(tmp_path / "x"), "--lengths", "6", "--pairs", "3"]) == 1
    assert "at least 9 tokens" in capsys.readouterr().err
    assert not (tmp_path / "x" / "results.json").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a GPU")
def test_device_cuda_without_a_gpu_is_a_clear_error(tmp_path, capsys):
    assert main(["research", "mqar", "--out", str(tmp_path / "out"), "--device", "cuda"]) == 1
    assert "--device cuda: no CUDA device is available" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
