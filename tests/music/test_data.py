import json
import os

import matplotlib.image
import mido
import numpy as np
import pytest

from eaglefinch.music import corpus
from eaglefinch.music.metrics import (
    compare_note_sets,
    inter_onset_intervals,
    js_distance,
    music_stats,
    note_density,
    pitch_class_entropy,
    pitch_class_histogram,
)
from eaglefinch.music.pianoroll import save_midi_and_pianoroll, save_pianoroll
from eaglefinch.music.prepare import prepare
from eaglefinch.music.tokenizer import DRUMS, MidiTokenizer, Note, match_notes, midi_to_notes
from eaglefinch.rwkv_core.data import DataError, TokenDataset, split_of

TOKENIZER = MidiTokenizer()
TOLERANCE = 0.008 + 1e-9  # onsets and offsets come back within one time step


def piano_and_drums(kit, top_pitch=72):
    """Piano notes from 60 up to `top_pitch` (half a second each at 120 BPM) over a drum beat."""
    piano = [kit.program(0, 0)]
    for i, pitch in enumerate(range(60, top_pitch + 1, 4)):
        piano += [kit.on(480 * i, pitch, 40 + 5 * i), kit.off(480 * i + 400, pitch)]
    drums = [e for i in range(4) for e in (kit.on(480 * i, 36, 100, 9), kit.off(480 * i + 60, 36, 9))]
    return kit.build([piano, drums])


def shifted(notes, transpose=0, speed=1.0):
    """What augmentation should produce: non-drum pitches moved, all times divided by the speed."""
    return [
        Note(n.instrument, n.pitch + (0 if n.instrument == DRUMS else transpose), n.start / speed, n.end / speed, n.velocity)
        for n in notes
    ]


def assert_same_notes(expected, actual):
    _, missing, extra = match_notes(expected, actual, TOLERANCE, TOKENIZER.velocity_bin)
    assert not missing and not extra, f"missing {missing[:4]}, extra {extra[:4]}"


# -- augmentation and shards -----------------------------------------------------------------------


@pytest.mark.parametrize("transpose, speed", [(-5, 1.0), (3, 1.0), (0, 1.25), (2, 0.8)])
def test_augmentation_moves_pitches_and_times(kit, transpose, speed):
    midi = piano_and_drums(kit)
    decoded = TOKENIZER.decode(TOKENIZER.encode(midi, transpose=transpose, tempo_factor=speed))
    assert_same_notes(shifted(midi_to_notes(midi), transpose, speed), midi_to_notes(decoded))
    tempos = [m.tempo for track in decoded.tracks for m in track if m.type == "set_tempo"]
    assert [TOKENIZER.tempo_bin(60e6 / t) for t in tempos] == [TOKENIZER.tempo_bin(120 * speed)]


def test_transposition_out_of_range_is_refused(kit):
    with pytest.raises(ValueError, match="out of 0..127"):
        TOKENIZER.encode(piano_and_drums(kit, top_pitch=124), transpose=4)


def test_prepare_counts_skips_and_writes_shards(tmp_path, kit):
    folder, out = tmp_path / "midi", tmp_path / "out"
    (folder / "sub").mkdir(parents=True)
    piano_and_drums(kit).save(folder / "a.mid")
    piano_and_drums(kit, top_pitch=68).save(folder / "b.mid")
    piano_and_drums(kit, top_pitch=124).save(folder / "sub" / "high.midi")  # +4 would leave 0..127
    kit.build([[kit.on(0, 38, 90, 9), kit.off(100, 38, 9)]]).save(folder / "drums.mid")  # drums only: kept
    kit.build([[kit.tempo(0, 90)]]).save(folder / "silent.mid")
    (folder / "random.mid").write_bytes(os.urandom(1000))
    (folder / "text.mid").write_text("MIDI? no.\n")
    (folder / "cut.mid").write_bytes((folder / "a.mid").read_bytes()[:60])
    kit.build([[(0, mido.MetaMessage("set_tempo", tempo=0)), kit.on(0, 60), kit.off(480, 60)]]).save(folder / "tempo0.mid")
    (folder / "notes.txt").write_text("not a MIDI file name, not counted\n")

    stats = prepare(folder, out, TOKENIZER, transpositions=(-1, 0, 4), tempo_factors=(1.0, 1.5), val_fraction=0.3, progress=False)

    assert stats["files"] == 9
    assert stats["skipped"] == {"unreadable": 4, "empty": 1, "transpositions": 2}
    assert sorted(stats["unreadable"]) == ["midi/cut.mid", "midi/random.mid", "midi/tempo0.mid", "midi/text.mid"]
    assert "truncated" in stats["unreadable"]["midi/cut.mid"] and "tempo 0" in stats["unreadable"]["midi/tempo0.mid"]
    # the split hashes each file's key; with these names both splits get files
    split = {name: split_of(f"midi/{name}", 0.3) for name in ("a.mid", "b.mid", "sub/high.midi", "drums.mid")}
    assert split == {"a.mid": "train", "b.mid": "val", "sub/high.midi": "train", "drums.mid": "val"}
    # train: 2 tempos x 3 transpositions, but high.midi cannot go up by 4
    assert stats["splits"]["train"]["docs"] == 2 * 3 + 2 * 2 and stats["splits"]["val"]["docs"] == 2

    docs = {}
    for name in ("train", "val"):
        data = TokenDataset(out, name)
        assert MidiTokenizer.from_dict(data.metadata["tokenizer"]).config == TOKENIZER.config
        stream = data.window(0, len(data))
        docs[name] = np.split(stream, np.flatnonzero(stream == 0) + 1)[:-1]
        assert len(docs[name]) == data.docs == stats["splits"][name]["docs"]
        assert len(stream) == stats["splits"][name]["tokens"]
        assert all(d[0] == TOKENIZER.START and d[-2] == TOKENIZER.END and d[-1] == 0 for d in docs[name])
        assert sum(TOKENIZER.count_notes(d) for d in docs[name]) == stats["splits"][name]["notes"]
    # documents come file by file (sorted), transposition by transposition, tempo by tempo
    a = midi_to_notes(folder / "a.mid")
    assert_same_notes(shifted(a, -1), midi_to_notes(TOKENIZER.decode(docs["train"][0])))
    assert_same_notes(shifted(a, 4, 1.5), midi_to_notes(TOKENIZER.decode(docs["train"][5])))
    assert_same_notes(midi_to_notes(folder / "b.mid"), midi_to_notes(TOKENIZER.decode(docs["val"][0])))
    assert json.loads((out / "stats.json").read_text()) == stats


def test_prepare_refuses_bad_folders_and_leaves_nothing(tmp_path):
    with pytest.raises(DataError, match="not found"):
        prepare(tmp_path / "missing", tmp_path / "out", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .mid"):
        prepare(tmp_path / "empty", tmp_path / "out", progress=False)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.mid").write_bytes(b"nope")
    with pytest.raises(DataError, match="no usable MIDI"):
        prepare(tmp_path / "junk", tmp_path / "out", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "junk"]


# -- music21 corpus ------------------------------------------------------------------------------


def test_corpus_listing():
    chorales, quartets = corpus.bach_chorales(), corpus.string_quartets()
    assert len(chorales) >= 400 and all(p.suffix in (".mxl", ".xml") for p in chorales)
    composers = {p.relative_to(corpus.corpus_root()).parts[0] for p in quartets}
    assert len(quartets) >= 40 and composers == {"beethoven", "haydn", "mozart"}
    tunes = corpus.abc_tunes(ascii_only=False)
    ascii_tunes = corpus.abc_tunes()
    assert len(tunes) > 12_000 and all(t.startswith("X:") and "\nK:" in t for t in tunes)
    assert 0 < len(tunes) - len(ascii_tunes) < len(tunes) // 10 and all(t.isascii() for t in ascii_tunes)


def test_conversion_is_resumable_and_counts_failures(music21_midi, tmp_path):
    files, cache = music21_midi.files, music21_midi.cache
    assert music21_midi.report.converted == len(files) == len(music21_midi.scores)
    assert files == sorted(cache / corpus.midi_name(s) for s in music21_midi.scores)
    assert all(any(m.type == "note_on" for m in mido.MidiFile(f)) for f in files)
    bogus = tmp_path / "bogus.xml"
    bogus.write_text("<score-partwise><part id='P1'><measure>broken")
    again = corpus.convert_scores(music21_midi.scores + [bogus], cache, workers=1, progress=False)
    assert again.cached == len(files) and again.converted == 0
    assert list(again.failed) == [str(bogus)] and again.midi_files == files
    assert not list(cache.rglob("*.tmp")) and not (cache / "bogus.mid").exists()


# -- piano roll ----------------------------------------------------------------------------------


def test_generation_writes_midi_and_pianoroll(tmp_path, kit):
    ids = TOKENIZER.encode(piano_and_drums(kit))
    (tmp_path / "gen").mkdir()
    midi_path, png_path = save_midi_and_pianoroll(TOKENIZER.decode(ids), tmp_path / "gen" / "piece.mid", "test")
    assert png_path == tmp_path / "gen" / "piece.png"
    assert len(midi_to_notes(mido.MidiFile(midi_path))) == TOKENIZER.count_notes(ids)
    image = matplotlib.image.imread(png_path)
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and image.shape[0] > 100 and image.shape[1] > 100
    empty = save_pianoroll([], tmp_path / "empty.png")
    assert matplotlib.image.imread(empty).shape[2] in (3, 4)
    assert sorted(p.name for p in (tmp_path / "gen").iterdir()) == ["piece.mid", "piece.png"]


# -- metrics -------------------------------------------------------------------------------------


def scale(transpose=0):
    """C major from C4 to C5, half a second per note, plus a drum hit with the first note."""
    pitches = [60, 62, 64, 65, 67, 69, 71, 72]
    notes = [Note(0, p + transpose, 0.5 * i, 0.5 * i + 0.5, 80) for i, p in enumerate(pitches)]
    return notes + [Note(DRUMS, 37, 0.0, 0.1, 100)]


def test_metrics_on_a_scale():
    notes = scale()
    expected = np.array([2, 0, 1, 0, 1, 1, 0, 1, 0, 1, 0, 1]) / 8  # C counted twice, drums ignored
    assert np.allclose(pitch_class_histogram(notes), expected)
    assert pitch_class_entropy(notes) == pytest.approx(2.75)  # 2/8 * 2 bits + 6 * 1/8 * 3 bits
    assert note_density(notes) == pytest.approx(9 / 4.0)
    assert np.allclose(inter_onset_intervals(notes), [0.5] * 7)  # the drum shares the first onset
    stats = music_stats(notes)
    assert stats["notes"] == 9 and stats["ioi_mean"] == pytest.approx(0.5) and stats["ioi_std"] == pytest.approx(0)
    assert np.isnan(music_stats(notes[:1])["ioi_mean"]) and note_density([]) == 0


def test_set_comparison():
    assert js_distance([1, 0], [1, 0]) == 0 and js_distance([1, 0], [0, 1]) == pytest.approx(1)
    same = compare_note_sets([scale()], [scale()])
    assert same["pitch_class_js_distance"] == pytest.approx(0, abs=1e-7) and same["pitch_class_overlap"] == pytest.approx(1)
    moved = compare_note_sets([scale(1)], [scale()])
    # C# major shares only B# = C (1/8 against 2/8) and E# = F (1/8 each) with C major
    assert moved["pitch_class_overlap"] == pytest.approx(0.25)
    assert moved["note_density_generated"] == moved["note_density_reference"] == pytest.approx(9 / 4)
    assert moved["ioi_median_generated"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="no pitched notes"):
        compare_note_sets([[Note(DRUMS, 36, 0, 1, 90)]], [scale()])


def test_prepare_replaces_a_folder_only_with_overwrite(tmp_path, kit, capsys):
    from eaglefinch.cli import main

    (tmp_path / "midi").mkdir()
    piano_and_drums(kit).save(tmp_path / "midi" / "a.mid")
    out = tmp_path / "data"
    out.mkdir()
    (out / "old.txt").write_text("an earlier data set")
    args = ["music", "prepare", str(tmp_path / "midi"), "--out", str(out), "--transpose", "0", "--tempo", "1.0",
            "--val-fraction", "0"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "overwrite" in err and str(out) in err, err
    assert sorted(p.name for p in out.iterdir()) == ["old.txt"]
    assert main(args + ["--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["stats.json", "train"]
    # never over the input
    for target in (tmp_path / "midi", tmp_path):
        assert main(args[:3] + ["--out", str(target), "--overwrite"]) == 1
        assert "would delete the input" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "midi").iterdir()] == ["a.mid"]
