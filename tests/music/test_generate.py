"""Music generation and evaluation on untrained or rigged tiny models (fast): progress bars, the
length of a generated piece, what `generate` and the demo report."""
from eaglefinch.cli import main
from eaglefinch.music.evaluate import split_pieces
from eaglefinch.music.generate import generate_music
from eaglefinch.music.metrics import density_range, note_density, piece_report
from eaglefinch.music.run import MusicRun
from eaglefinch.music.tokenizer import MidiTokenizer, Note, midi_to_notes
from eaglefinch.rwkv_core.data import TokenDataset


# -- progress -------------------------------------------------------------------------------------


def test_eval_shows_its_progress(untrained_run, scale_data, tmp_path, capsys):
    args = ["music", "eval", "--checkpoint", str(untrained_run), "--data", str(scale_data), "--samples", "2",
            "--seconds", "1", "--out", str(tmp_path)]
    assert main(args) == 0
    err = capsys.readouterr().err
    for bar in ("loss on split 'val'", "generating", "reading the pieces of split 'val'"):
        assert bar in err, err


def test_a_long_prompt_shows_its_progress(untrained_run, kit, tmp_path, capsys):
    prompt = tmp_path / "prompt.mid"
    kit.scale(600).save(prompt)  # about 1,800 tokens: more than one chunk of 1,024
    out = tmp_path / "song.mid"
    args = ["music", "generate", "--checkpoint", str(untrained_run), "--out", str(out), "--prompt-midi", str(prompt),
            "--seconds", "1", "--seed", "0"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "reading the prompt" in err and "generating" in err, err


# -- the length of a piece ---------------------------------------------------------------------------


def end_prone_tokens(tokenizer) -> tuple[int, ...]:
    """For a rigged model that ends a piece at every fourth token or so, between notes of 0.2 s."""
    ranges = tokenizer.ranges
    return tokenizer.END, ranges["on"][60 * tokenizer.config.velocity_bins + 8], ranges["off"][60], ranges["shift"][24]


def test_generation_goes_on_to_the_requested_length_unless_asked_to_stop_at_the_end(make_music_run, tmp_path):
    model, tokenizer = MusicRun.open(make_music_run(tmp_path / "run", end_prone_tokens(MidiTokenizer()))).load()
    full = generate_music(model, tokenizer, [[tokenizer.START]] * 2, seconds=3, seed=0)
    for ids in full:
        assert tokenizer.END not in ids[:-1]
        length = max(n.end for n in midi_to_notes(tokenizer.decode(ids)))
        assert 3 - 1 <= length <= 3 + 0.008  # no shift goes past 3 s
    stopped = generate_music(model, tokenizer, [[tokenizer.START]] * 2, seconds=3, seed=0, stop_at_end=True)
    assert all(len(ids) < 40 for ids in stopped)  # the model's own <end> came first


def test_generate_prints_the_real_length(make_music_run, tmp_path, capsys):
    run = make_music_run(tmp_path / "run", end_prone_tokens(MidiTokenizer()))
    out = tmp_path / "song.mid"
    args = ["music", "generate", "--checkpoint", str(run), "--out", str(out), "--seconds", "3", "--seed", "1"]
    assert main(args) == 0
    notes = midi_to_notes(out)
    length = max(n.end for n in notes)
    assert length > 2
    printed = capsys.readouterr().out
    assert f"{length:.1f} s" in printed and f"{len(notes)} notes" in printed, printed
    assert main(args + ["--stop-at-end"]) == 0
    assert max((n.end for n in midi_to_notes(out)), default=0.0) < 1.5  # <end> came first


# -- what the demo reports ---------------------------------------------------------------------------


def test_piece_report():
    notes = [Note(0, 60 + i, 0.5 * i, 0.5 * i + 0.5, 80) for i in range(8)]  # 8 notes in 4 s: 2 a second
    assert piece_report(notes) == "4.0 s, 8 notes, 2.0 notes/s"
    assert piece_report(notes, (1.5, 3.0)) == ("4.0 s, 8 notes, 2.0 notes/s: within the training pieces' "
                                               "1.5-3.0 notes/s (10th-90th percentile)")
    assert piece_report(notes, (2.5, 3.0)).endswith("below the training pieces' 2.5-3.0 notes/s (10th-90th percentile)")
    assert piece_report([]) == "0.0 s, 0 notes, 0.0 notes/s"


def test_density_range_of_the_training_pieces(scale_data):
    tokenizer = MidiTokenizer()
    train = TokenDataset(scale_data, "train")
    pieces = split_pieces(tokenizer, train, max_tokens=len(train))
    assert len(pieces) == train.docs
    densities = sorted(note_density(piece) for piece in pieces)
    low, high = density_range(pieces)
    assert len(set(densities)) >= 3 and densities[0] < low < high < densities[-1]
    assert density_range([[]] * 3 + pieces) == (low, high)  # a piece without notes is not counted
