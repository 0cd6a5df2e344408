"""MIDI to audio: a WAV file rendered offline by FluidSynth with a General MIDI SoundFont.

    soundfont = find_soundfont()                  # or a .sf2 of your own; AudioError says what to install
    render_wav("song.mid", "song.wav", soundfont)

The route: FluidSynth's library (`libfluidsynth`, from Debian's `fluidsynth` or `libfluidsynth3`)
driven through its Python binding `pyfluidsynth` (the `music` extra). We play the file's messages
into the synthesizer ourselves, in seconds as mido times them, and pull each stretch of samples
in between, so rendering needs no audio device, no `fluidsynth` command and no clock: the audio
is the file's length to the sample, plus `TAIL_SECONDS` for the last notes to fade. Samples go
straight to the file (the stdlib `wave` module), so memory does not grow with the piece.
"""
from __future__ import annotations

import wave
from pathlib import Path

from eaglefinch.rwkv_core.files import atomic_path

from .tokenizer import read_midi

SAMPLE_RATE = 44100
TAIL_SECONDS = 1.0  # after the last event: released notes and the reverb fade out
GAIN = 0.5  # FluidSynth's master gain (its default, 0.2, leaves a four-part chorale quiet)
BLOCK_FRAMES = 4096  # frames pulled from the synthesizer at once
# where Debian/Ubuntu (fluid-soundfont-gm), Fedora and Arch put a General MIDI SoundFont
SOUNDFONT_PATHS = ("/usr/share/sounds/sf2/FluidR3_GM.sf2", "/usr/share/sounds/sf2/default-GM.sf2",
                   "/usr/share/soundfonts/FluidR3_GM.sf2", "/usr/share/soundfonts/default.sf2")
INSTALL_HINT = "apt install fluidsynth fluid-soundfont-gm (Debian/Ubuntu) and pip install pyfluidsynth"


class AudioError(RuntimeError):
    """Audio cannot be rendered here: the message says what to install or give."""


def load_fluidsynth():
    """The `fluidsynth` module of pyfluidsynth with its library loaded, or AudioError naming what is missing."""
    try:
        import fluidsynth
    except ImportError as e:
        # pyfluidsynth itself absent, or present without the library it binds (its own ImportError)
        missing = "pyfluidsynth" if isinstance(e, ModuleNotFoundError) and e.name == "fluidsynth" \
            else "the FluidSynth library"
        raise AudioError(f"rendering audio needs FluidSynth: {missing} is missing ({e}); {INSTALL_HINT}") from None
    return fluidsynth


def find_soundfont(soundfont=None) -> Path:
    """The SoundFont to render with: `soundfont` if given (it must exist), else the first of
    SOUNDFONT_PATHS that exists; AudioError otherwise."""
    if soundfont is not None:
        if not Path(soundfont).is_file():
            raise AudioError(f"{soundfont}: no such SoundFont file")
        return Path(soundfont)
    for path in map(Path, SOUNDFONT_PATHS):
        if path.is_file():
            return path
    raise AudioError(f"no General MIDI SoundFont found (looked for {', '.join(SOUNDFONT_PATHS)}): "
                     f"apt install fluid-soundfont-gm, or give --soundfont FILE.sf2")


def check_audio(soundfont=None) -> Path:
    """Raise AudioError unless a WAV can be rendered here (FluidSynth and a SoundFont); returns the
    SoundFont. Commands call it before they generate, so a missing piece costs no work."""
    load_fluidsynth()
    return find_soundfont(soundfont)


def _send(synth, message) -> None:
    """Play one MIDI channel message into the synthesizer (other messages make no sound)."""
    kind = message.type
    if kind == "note_on":
        synth.noteon(message.channel, message.note, message.velocity)  # velocity 0 is a note-off
    elif kind == "note_off":
        synth.noteoff(message.channel, message.note)
    elif kind == "control_change":
        synth.cc(message.channel, message.control, message.value)
    elif kind == "program_change":
        synth.program_change(message.channel, message.program)
    elif kind == "pitchwheel":
        synth.pitch_bend(message.channel, message.pitch)


def render_wav(midi, out, soundfont=None, sample_rate: int = SAMPLE_RATE) -> Path:
    """Render a MIDI file (path or `mido.MidiFile`) to a 16-bit stereo WAV at `out`, written atomically.

    Lasts the file's length (mido's `MidiFile.length`, to the sample) plus TAIL_SECONDS. Raises
    AudioError without FluidSynth or a SoundFont, MidiError for unreadable MIDI; `out` is then untouched.
    """
    midi = read_midi(midi)
    fluidsynth = load_fluidsynth()
    soundfont = find_soundfont(soundfont)
    synth = fluidsynth.Synth(gain=GAIN, samplerate=float(sample_rate))
    try:
        if synth.sfload(str(soundfont), 1) == -1:  # 1: give every channel its General MIDI preset
            raise AudioError(f"{soundfont}: FluidSynth cannot load this SoundFont")
        with atomic_path(out) as tmp, wave.open(str(tmp), "wb") as wav:
            wav.setnchannels(2)
            wav.setsampwidth(2)
            wav.setframerate(sample_rate)
            seconds, frames = 0.0, 0

            def advance_to(t):  # render until t seconds; frames counted from the start, so no drift
                nonlocal frames
                due = round(t * sample_rate)
                while frames < due:
                    n = min(BLOCK_FRAMES, due - frames)
                    wav.writeframes(synth.get_samples(n).astype("<i2").tobytes())
                    frames += n

            for message in midi:  # mido yields messages with .time = seconds since the previous one
                seconds += message.time
                advance_to(seconds)
                if not message.is_meta:
                    _send(synth, message)
            advance_to(seconds + TAIL_SECONDS)
    finally:
        synth.delete()
    return Path(out)
