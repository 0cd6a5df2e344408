"""Conditioning tokens (issue 22): the header of instruments, tempo and key, asking for it when
generating, and enforcing the instruments."""
import dataclasses
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eaglefinch.cli import main
from eaglefinch.music.conditioning import condition, key_index, parse_instruments
from eaglefinch.music.evaluate import evaluate_control, split_documents
from eaglefinch.music.generate import generate_music
from eaglefinch.music.run import MusicRun
from eaglefinch.music.tokenizer import (DRUMS, KEY_NAMES, Header, MidiTokenizer, TokenizerConfig, estimate_key,
                                        midi_to_notes)
from eaglefinch.rwkv_core.data import TokenDataset
from eaglefinch.rwkv_core.sampling import SamplerConfig
from tests.music.test_tokenizer import names, round_trip

PLAIN = MidiTokenizer()
CONDITIONED = MidiTokenizer(TokenizerConfig(conditioning=True))
MAJOR_SCALE = (0, 2, 4, 5, 7, 9, 11)


def quartet(kit, bpm=90, tonic=62, later_bpm=None):
    """Piano, violin, cello and drums: the tonic's major scale (its tonic held longest) at `bpm`,
    and `later_bpm` for the last of its four beats."""
    scale = [tonic + step for step in MAJOR_SCALE]
    tracks = [[kit.tempo(0, bpm)] + ([kit.tempo(1440, later_bpm)] if later_bpm else [])]
    tracks.append([kit.program(0, 0, 0), kit.on(0, scale[0] - 12), kit.off(1920, scale[0] - 12)])
    violin = [kit.program(0, 40, 1)]
    for i, pitch in enumerate(scale):
        violin += [kit.on(240 * i, pitch, 90, 1), kit.off(240 * (i + 1), pitch, 1)]
    tracks.append(violin)
    tracks.append([kit.program(0, 42, 2), kit.on(0, scale[4] - 24, 70, 2), kit.off(960, scale[4] - 24, 2)])
    tracks.append([kit.on(0, 36, 100, 9), kit.off(60, 36, 9)])
    return kit.build(tracks)


# -- the vocabulary ------------------------------------------------------------------------------


def test_conditioning_ids_come_after_the_old_vocabulary():
    assert PLAIN.vocab_size == 2501 and CONDITIONED.vocab_size == 2501 + 129 + 64 + 24 + 1
    for kind, ids in PLAIN.ranges.items():
        assert CONDITIONED.ranges[kind] == ids  # every old id keeps its meaning
    assert CONDITIONED.ranges["cond_inst"].start == PLAIN.vocab_size
    every_name = {CONDITIONED.token_name(i) for i in range(CONDITIONED.vocab_size)}
    assert len(every_name) == CONDITIONED.vocab_size
    assert {"cond:inst:drums", "cond:key:Bm", "cond:end", "cond:tempo:63"} <= every_name


def test_old_config_and_saved_tokenizers_encode_as_before(kit, tmp_path):
    midi = quartet(kit)
    plain_ids = PLAIN.encode(midi)
    # a tokenizer.json written before the option existed has no "conditioning" key
    old = PLAIN.to_dict()
    del old["config"]["conditioning"]
    (tmp_path / "tokenizer.json").write_text(json.dumps(old))
    assert MidiTokenizer.load(tmp_path / "tokenizer.json").encode(midi) == plain_ids
    # the events are the same ids with or without the header
    conditioned_ids = CONDITIONED.encode(midi)
    start, stop = 1, conditioned_ids.index(CONDITIONED.ranges["cond_end"][0]) + 1
    assert conditioned_ids[:start] + conditioned_ids[stop:] == plain_ids
    assert PLAIN.read_header(plain_ids) is None


# -- the header of a piece -----------------------------------------------------------------------


def test_header_round_trip(kit):
    midi = quartet(kit, bpm=90, tonic=62, later_bpm=150)  # D major, 3 beats at 90 BPM and 1 at 150
    ids = round_trip(midi, CONDITIONED)  # decoding skips the header: every note comes back
    expected = Header((0, 40, 42, DRUMS), CONDITIONED.tempo_bin(90), KEY_NAMES.index("D"))
    assert CONDITIONED.read_header(ids) == CONDITIONED.header_of(midi) == expected
    assert names(ids, CONDITIONED)[:7] == ["<start>", "cond:inst:0", "cond:inst:40", "cond:inst:42", "cond:inst:drums",
                                           f"cond:tempo:{CONDITIONED.tempo_bin(90)}", "cond:key:D"]
    assert CONDITIONED.header_ids(expected) == ids[1:8]
    # transposed and faster copies say so: E major, 1.5 times the tempo
    faster = CONDITIONED.encode(midi, transpose=2, tempo_factor=1.5)
    assert CONDITIONED.read_header(faster) == Header((0, 40, 42, DRUMS), CONDITIONED.tempo_bin(135), KEY_NAMES.index("E"))
    # a later tempo that lasts longest is the main one
    slow_start = quartet(kit, bpm=150, later_bpm=40)  # 3 beats of 0.4 s (1.2 s), then one of 1.5 s
    assert CONDITIONED.header_of(slow_start).tempo_bin == CONDITIONED.tempo_bin(40)


def test_header_of_drums_alone_has_no_key(kit):
    midi = kit.build([[kit.on(0, 36, 100, 9), kit.off(480, 36, 9)]])
    ids = round_trip(midi, CONDITIONED)
    assert CONDITIONED.read_header(ids) == Header((DRUMS,), CONDITIONED.tempo_bin(120), None)


@settings(max_examples=50, deadline=None)
@given(st.sets(st.integers(0, 128), max_size=5), st.none() | st.integers(0, 63), st.none() | st.integers(0, 23))
def test_any_header_reads_back_and_replaces_another(instruments, tempo_bin, key):
    header = Header(tuple(sorted(instruments)), tempo_bin, key)
    events = [CONDITIONED.ranges["inst"][40], CONDITIONED.ranges["on"][60 * 16 + 8], CONDITIONED.END]
    ids = [0, CONDITIONED.START, *CONDITIONED.header_ids(header), *events]
    assert CONDITIONED.read_header(ids) == header
    other = Header((DRUMS,), 5, None)
    assert CONDITIONED.with_header(ids, other) == [0, CONDITIONED.START, *CONDITIONED.header_ids(other), *events]
    assert CONDITIONED.with_header([CONDITIONED.START, *events], header) == ids[1:]  # inserted where there was none
    assert [(n.instrument, n.pitch) for n in midi_to_notes(CONDITIONED.decode(ids))] == [(40, 60)]


def test_header_needs_a_conditioning_tokenizer_and_a_start():
    with pytest.raises(ValueError, match="no conditioning tokens"):
        PLAIN.header_ids(Header((0,)))
    with pytest.raises(ValueError, match="begin with"):
        CONDITIONED.read_header([CONDITIONED.ranges["cond_end"][0]])


def test_key_estimate_agrees_with_music21(music21_midi):
    from music21 import converter, note, stream
    from music21.analysis.discrete import KrumhanslSchmuckler

    def music21_key(score) -> int:
        key = KrumhanslSchmuckler().getSolution(score)
        return key.tonic.pitchClass + (12 if key.mode == "minor" else 0)

    for path in music21_midi.files:
        # the same durations: one note per pitch class, as long as all of its notes together
        durations = [0.0] * 12
        for n in midi_to_notes(path, beats=True):
            durations[n.pitch % 12] += (n.end - n.start) * (n.instrument != DRUMS)
        pitch_classes = stream.Stream([note.Note(pc, quarterLength=d) for pc, d in enumerate(durations) if d > 0])
        assert estimate_key(durations) == PLAIN.header_of(path).key == music21_key(pitch_classes), path
        if "bach" in path.parts:  # music21 reads the chorales as we do (the quartet's doubled notes differ)
            assert PLAIN.header_of(path).key == music21_key(converter.parse(path)), path


def test_key_estimate_follows_transposition():
    a_minor = [0.0] * 12
    for pitch_class, beats in ((9, 4), (0, 2), (4, 3), (11, 1), (2, 1), (5, 1), (8, 1)):  # A C E B D F G#
        a_minor[pitch_class] = beats
    assert KEY_NAMES[estimate_key(a_minor)] == "Am"
    for shift in range(12):
        assert estimate_key(a_minor[-shift:] + a_minor[:-shift]) == 12 + (9 + shift) % 12
    assert estimate_key([0.0] * 12) is None and estimate_key([2.0] * 12) is None


# -- names ----------------------------------------------------------------------------------------


def test_instrument_and_key_names():
    assert parse_instruments("piano,violin,cello") == (0, 40, 42)
    assert parse_instruments(" Church Organ, acoustic-guitar-(nylon) ,drums,41,violin") == (19, 24, 40, 41, DRUMS)
    assert [key_index(k) for k in ("C", "D", "Bm", "F#", "Ebm", "Db", "c# minor", "Bb", "bm", "Cb")] == \
        [0, 2, 23, 6, 15, 1, 13, 10, 23, 11]
    assert all(key_index(name) == i for i, name in enumerate(KEY_NAMES))
    with pytest.raises(ValueError, match="unknown instrument 'viollin' .did you mean violin"):
        parse_instruments("piano,viollin")
    for bad in ("128", "", "piano,,cello"):
        with pytest.raises(ValueError, match="unknown instrument"):
            parse_instruments(bad)
    for bad in ("H", "D##", "Dm7", ""):
        with pytest.raises(ValueError, match="unknown key"):
            key_index(bad)


# -- asking for a piece ----------------------------------------------------------------------------


def test_condition_writes_the_request_into_the_prompt(kit):
    inst, cond = CONDITIONED.ranges["inst"], CONDITIONED.ranges["cond_inst"]
    sampler = SamplerConfig(banned_tokens=(7,))
    prompt, banned = condition(CONDITIONED, [CONDITIONED.START], sampler, instruments=(40, 42), bpm=96, key=2)
    header = Header((40, 42), CONDITIONED.tempo_bin(96), 2)
    # piano, where the decoder starts, is not asked for: the prompt ends on the first instrument asked for
    assert prompt == [CONDITIONED.START, *CONDITIONED.header_ids(header), inst[40]]
    assert set(banned.banned_tokens) == ({7} | {inst[i] for i in range(129) if i not in (40, 42)}
                                         | set(range(cond.start, CONDITIONED.vocab_size)))
    # a prompt file keeps the fields not asked for; piano asked for needs no instrument token
    own = CONDITIONED.encode(quartet(kit))[:-1]
    prompt, _ = condition(CONDITIONED, own, sampler, instruments=(0,))
    assert CONDITIONED.read_header(prompt) == dataclasses.replace(CONDITIONED.read_header(own), instruments=(0,))
    events = own[own.index(CONDITIONED.ranges["cond_end"][0]) + 1:]
    assert prompt[prompt.index(CONDITIONED.ranges["cond_end"][0]) + 1:] == events  # no instrument token added
    # not enforced: the header alone
    prompt, unbanned = condition(CONDITIONED, [CONDITIONED.START], sampler, instruments=(40,), ban=False)
    assert prompt == [CONDITIONED.START, cond[40], CONDITIONED.ranges["cond_end"][0]]
    assert not set(unbanned.banned_tokens) & set(inst)
    # a plain tokenizer bans, and cannot be asked for tempo or key
    prompt, banned = condition(PLAIN, [PLAIN.START], sampler, instruments=(DRUMS,))
    assert prompt == [PLAIN.START, PLAIN.ranges["inst"][DRUMS]] and len(banned.banned_tokens) == 1 + 128
    for request in ({"bpm": 96}, {"key": 2}):
        with pytest.raises(ValueError, match="no conditioning tokens"):
            condition(PLAIN, [PLAIN.START], sampler, **request)
    assert condition(PLAIN, [PLAIN.START], sampler) == ([PLAIN.START], sampler)
    with pytest.raises(ValueError, match="outside the 20-320 BPM"):
        condition(CONDITIONED, [CONDITIONED.START], sampler, bpm=500)


@pytest.mark.parametrize("tokenizer", [PLAIN, CONDITIONED], ids=["plain", "conditioned"])
def test_generated_piece_uses_only_the_instruments_asked_for(make_music_run, tmp_path, tokenizer):
    model, tokenizer = MusicRun.open(make_music_run(tmp_path / "run", tokenizer=tokenizer)).load()
    free = generate_music(model, tokenizer, [[tokenizer.START]], seconds=4, seed=0)[0]
    assert len({n.instrument for n in midi_to_notes(tokenizer.decode(free))}) > 3  # random weights: anything goes
    for asked in [(40, 42), (DRUMS,), (0, 73)]:
        prompt, sampler = condition(tokenizer, [tokenizer.START], SamplerConfig(), instruments=asked)
        pieces = generate_music(model, tokenizer, [prompt] * 3, seconds=4, sampler=sampler, seed=1)
        notes = [n for ids in pieces for n in midi_to_notes(tokenizer.decode(ids))]
        assert len(notes) > 50 and {n.instrument for n in notes} <= set(asked), asked


# -- the commands --------------------------------------------------------------------------------


def test_generate_command_with_instruments_tempo_and_key(make_music_run, tmp_path, capsys):
    run = make_music_run(tmp_path / "run", tokenizer=CONDITIONED)
    out = tmp_path / "song.mid"
    base = ["music", "generate", "--checkpoint", str(run), "--out", str(out), "--seconds", "3", "--seed", "0"]
    assert main(base + ["--instruments", "violin,cello", "--tempo", "96", "--key", "D"]) == 0
    notes = midi_to_notes(out)
    assert len(notes) > 20 and {n.instrument for n in notes} <= {40, 42}
    capsys.readouterr()

    plain = make_music_run(tmp_path / "plain")
    plain_args = ["music", "generate", "--checkpoint", str(plain), "--out", str(tmp_path / "plain.mid"), "--seconds", "2"]
    assert main(plain_args + ["--instruments", "drums"]) == 0  # instruments alone: banned, no header needed
    assert {n.instrument for n in midi_to_notes(tmp_path / "plain.mid")} == {DRUMS}
    capsys.readouterr()
    assert main(plain_args + ["--key", "Bm"]) == 1
    assert "eaglefinch: error: this run's tokenizer has no conditioning tokens" in capsys.readouterr().err

    for option, value in (("--instruments", "piano,viollin"), ("--key", "H"), ("--tempo", "500")):
        with pytest.raises(SystemExit) as exit:
            main(base + [option, value])
        assert exit.value.code == 2
        assert f"argument {option}: " in capsys.readouterr().err


def test_prepare_with_conditioning_and_evaluate_control(kit, make_music_run, tmp_path):
    (tmp_path / "midi").mkdir()
    for i in range(10):
        quartet(kit, bpm=60 + 10 * i, tonic=60 + i).save(tmp_path / "midi" / f"piece{i}.mid")
    data = tmp_path / "data"
    args = ["music", "prepare", str(tmp_path / "midi"), "--out", str(data), "--conditioning", "--transpose", "-1", "0",
            "1", "--tempo", "1", "--val-fraction", "0.3"]
    assert main(args) == 0
    tokenizer = MidiTokenizer.from_dict(TokenDataset(data, "train").metadata["tokenizer"])
    assert tokenizer.config.conditioning
    held_out = [tokenizer.read_header(doc) for doc in split_documents(TokenDataset(data, "val"))]
    assert held_out and all(h.instruments and h.tempo_bin is not None and h.key is not None for h in held_out)
    training = [tokenizer.read_header(doc) for doc in split_documents(TokenDataset(data, "train"))]
    assert all(h is not None for h in training)
    # some training copies leave a field out (a 0.2 chance each), so a request may name any of them
    assert any(not h.instruments for h in training) and any(h.key is None for h in training)
    assert sum(bool(h.instruments) and h.tempo_bin is not None and h.key is not None for h in training) > len(training) / 3

    model, run_tokenizer = MusicRun.open(make_music_run(tmp_path / "run", tokenizer=tokenizer)).load()
    results = evaluate_control(model, run_tokenizer, data, pieces=2, seconds=1, progress=False)
    assert results["pieces"] == 2 and set(results["modes"]) == {"unasked", "header", "header+ban"}
    assert results["modes"]["header+ban"]["on_requested"] == 1.0
    assert results["modes"]["header"]["on_requested"] < 1.0  # random weights have learned nothing
