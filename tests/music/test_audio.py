"""Audio: `music render`, and `--audio` on generate and continue, through FluidSynth.

Rendering tests skip, with the message that says what to install, only where FluidSynth or a
SoundFont is missing (`.ci/run` installs them where it can). What the commands do without them is
tested everywhere, by hiding pyfluidsynth or the SoundFonts."""
import sys
import wave

import mido
import numpy as np
import pytest

from eaglefinch.cli import main
from eaglefinch.music import audio
from eaglefinch.music.audio import TAIL_SECONDS, AudioError, check_audio, render_wav


@pytest.fixture(scope="module")
def fluidsynth_here():
    try:
        check_audio()
    except AudioError as e:
        pytest.skip(str(e))


def read_wav(path):
    """(samples [frames, 2] float in -1..1, sample rate)."""
    with wave.open(str(path)) as wav:
        assert (wav.getnchannels(), wav.getsampwidth()) == (2, 2)
        frames = np.frombuffer(wav.readframes(wav.getnframes()), "<i2").reshape(-1, 2)
        return frames / 32768.0, wav.getframerate()


def loudness(samples, rate, start, end):
    """Root mean square of the samples between start and end seconds."""
    return float(np.sqrt(np.mean(samples[round(start * rate):round(end * rate)] ** 2)))


def test_a_render_lasts_the_piece_and_sounds_where_its_notes_do(fluidsynth_here, kit, tmp_path):
    # silence, a note at 120 BPM, a tempo change to 60 BPM, then a drum hit and a note on a violin:
    # mido's length (7.0 s) counts the tempo map, and so must the audio
    piece = kit.build([
        [kit.tempo(0, 120), kit.on(1920, 60), kit.off(3840, 60), kit.tempo(3840, 60), kit.program(3840, 40, channel=1),
         kit.on(4800, 42, channel=9), kit.off(4920, 42, channel=9), kit.on(6720, 67, channel=1),
         kit.off(8640, 67, channel=1)],
    ], ticks_per_beat=960)
    source = tmp_path / "piece.mid"
    piece.save(source)
    assert mido.MidiFile(source).length == pytest.approx(7.0)
    samples, rate = read_wav(render_wav(source, tmp_path / "piece.wav"))
    assert len(samples) == round((7.0 + TAIL_SECONDS) * rate)
    silent, sounding = 1e-4, 3e-3  # RMS; FluidSynth's dither alone is about 1.5e-5
    for start, end in ((0.0, 0.95), (2.5, 2.95), (4.0, 4.95)):     # before each event, after the last fades
        assert loudness(samples, rate, start, end) < silent, (start, end)
    for start, end in ((1.0, 1.9), (3.0, 3.1), (5.05, 6.95)):     # the piano, the drum (3.0 s), the violin
        assert loudness(samples, rate, start, end) > sounding, (start, end)
    assert loudness(samples, rate, 7.0 + TAIL_SECONDS - 0.1, 7.0 + TAIL_SECONDS) < sounding  # faded by the end


def test_the_render_command_and_generate_with_audio(fluidsynth_here, untrained_run, kit, tmp_path, capsys):
    source, out = tmp_path / "scale.mid", tmp_path / "scale.wav"
    kit.scale(8).save(source)   # 8 notes of 0.25 s
    assert main(["music", "render", str(source), str(out)]) == 0
    assert f"wrote {out}: {2.0 + TAIL_SECONDS:.1f} s of audio" in capsys.readouterr().out
    song, sound = tmp_path / "song.mid", tmp_path / "song.wav"
    assert main(["music", "generate", "--checkpoint", str(untrained_run), "--out", str(song), "--seconds", "2",
                 "--seed", "0", "--audio", str(sound), "--soundfont", str(check_audio())]) == 0
    samples, rate = read_wav(sound)
    assert len(samples) == round((mido.MidiFile(song).length + TAIL_SECONDS) * rate)


def one_error(capsys) -> str:
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1, errors
    return errors[0]


def test_without_pyfluidsynth_audio_is_one_error_naming_what_to_install_and_nothing_is_written(
        untrained_run, kit, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "fluidsynth", None)  # `import fluidsynth` fails as if not installed
    source, out = tmp_path / "scale.mid", tmp_path / "scale.wav"
    kit.scale(8).save(source)
    assert main(["music", "render", str(source), str(out)]) == 1
    error = one_error(capsys)
    assert "pyfluidsynth is missing" in error and "apt install fluidsynth fluid-soundfont-gm" in error, error
    # generate checks before it generates: neither the piece nor its audio is written
    song = tmp_path / "song.mid"
    assert main(["music", "generate", "--checkpoint", str(untrained_run), "--out", str(song),
                 "--seconds", "1", "--audio", str(tmp_path / "song.wav")]) == 1
    assert "pyfluidsynth is missing" in one_error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scale.mid"]


def test_without_a_soundfont_audio_is_one_error_naming_what_to_install(kit, tmp_path, capsys, monkeypatch):
    pytest.importorskip("fluidsynth", reason="pyfluidsynth with its library is needed to get to the SoundFont")
    monkeypatch.setattr(audio, "SOUNDFONT_PATHS", (str(tmp_path / "none.sf2"),))
    source, out = tmp_path / "scale.mid", tmp_path / "scale.wav"
    kit.scale(8).save(source)
    assert main(["music", "render", str(source), str(out)]) == 1
    error = one_error(capsys)
    assert "no General MIDI SoundFont found" in error and "apt install fluid-soundfont-gm" in error, error
    assert main(["music", "render", str(source), str(out), "--soundfont", str(tmp_path / "mine.sf2")]) == 1
    assert "mine.sf2: no such SoundFont file" in one_error(capsys)
    assert not out.exists()


def test_an_unreadable_midi_file_writes_no_audio(tmp_path, capsys):
    bad, out = tmp_path / "bad.mid", tmp_path / "bad.wav"
    bad.write_bytes(b"MThd\x00\x00")
    assert main(["music", "render", str(bad), str(out)]) == 1
    assert "not a readable MIDI file" in one_error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.mid"]
