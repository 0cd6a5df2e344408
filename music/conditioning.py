"""Asking for a piece: which instruments play, at what tempo, in which key (issue 22).

    prompt, sampler = condition(tokenizer, [tokenizer.START], SamplerConfig(),
                                instruments=parse_instruments("piano,violin,cello"), bpm=96, key=key_index("D"))
    ids = generate_music(model, tokenizer, [prompt], 30, sampler)[0]

A run prepared with `--conditioning` (`TokenizerConfig.conditioning`) learned each piece from a
header naming its instruments, tempo and key (see `music.tokenizer`): the request becomes the
prompt's header. With any tokenizer, the instruments are also enforced while sampling: every other
instrument's `inst:` token is banned, and the prompt ends on a requested instrument when the
decoder's current one (piano for a new piece) is not requested, so no note can fall outside the set.
"""
import dataclasses
import difflib
import re

from .tokenizer import DRUMS, KEY_NAMES, MAX_BPM, MIN_BPM, N_INSTRUMENTS, Header, MidiTokenizer

# General MIDI level 1 program names, 0..127
GM_PROGRAMS = (
    "Acoustic Grand Piano", "Bright Acoustic Piano", "Electric Grand Piano", "Honky-tonk Piano",
    "Electric Piano 1", "Electric Piano 2", "Harpsichord", "Clavinet",
    "Celesta", "Glockenspiel", "Music Box", "Vibraphone", "Marimba", "Xylophone", "Tubular Bells", "Dulcimer",
    "Drawbar Organ", "Percussive Organ", "Rock Organ", "Church Organ", "Reed Organ", "Accordion", "Harmonica",
    "Tango Accordion",
    "Acoustic Guitar (nylon)", "Acoustic Guitar (steel)", "Electric Guitar (jazz)", "Electric Guitar (clean)",
    "Electric Guitar (muted)", "Overdriven Guitar", "Distortion Guitar", "Guitar Harmonics",
    "Acoustic Bass", "Electric Bass (finger)", "Electric Bass (pick)", "Fretless Bass", "Slap Bass 1", "Slap Bass 2",
    "Synth Bass 1", "Synth Bass 2",
    "Violin", "Viola", "Cello", "Contrabass", "Tremolo Strings", "Pizzicato Strings", "Orchestral Harp", "Timpani",
    "String Ensemble 1", "String Ensemble 2", "Synth Strings 1", "Synth Strings 2", "Choir Aahs", "Voice Oohs",
    "Synth Voice", "Orchestra Hit",
    "Trumpet", "Trombone", "Tuba", "Muted Trumpet", "French Horn", "Brass Section", "Synth Brass 1", "Synth Brass 2",
    "Soprano Sax", "Alto Sax", "Tenor Sax", "Baritone Sax", "Oboe", "English Horn", "Bassoon", "Clarinet",
    "Piccolo", "Flute", "Recorder", "Pan Flute", "Blown Bottle", "Shakuhachi", "Whistle", "Ocarina",
    "Lead 1 (square)", "Lead 2 (sawtooth)", "Lead 3 (calliope)", "Lead 4 (chiff)", "Lead 5 (charang)",
    "Lead 6 (voice)", "Lead 7 (fifths)", "Lead 8 (bass + lead)",
    "Pad 1 (new age)", "Pad 2 (warm)", "Pad 3 (polysynth)", "Pad 4 (choir)", "Pad 5 (bowed)", "Pad 6 (metallic)",
    "Pad 7 (halo)", "Pad 8 (sweep)",
    "FX 1 (rain)", "FX 2 (soundtrack)", "FX 3 (crystal)", "FX 4 (atmosphere)", "FX 5 (brightness)",
    "FX 6 (goblins)", "FX 7 (echoes)", "FX 8 (sci-fi)",
    "Sitar", "Banjo", "Shamisen", "Koto", "Kalimba", "Bagpipe", "Fiddle", "Shanai",
    "Tinkle Bell", "Agogo", "Steel Drums", "Woodblock", "Taiko Drum", "Melodic Tom", "Synth Drum", "Reverse Cymbal",
    "Guitar Fret Noise", "Breath Noise", "Seashore", "Bird Tweet", "Telephone Ring", "Helicopter", "Applause", "Gunshot",
)
# short names for the usual member of a family
ALIASES = {"piano": 0, "organ": 19, "guitar": 24, "bass": 32, "harp": 46, "strings": 48, "choir": 52, "horn": 60,
           "sax": 65, "drums": DRUMS, "percussion": DRUMS}
PITCH_CLASSES = {"c": 0, "d": 2, "e": 4, "f": 5, "g": 7, "a": 9, "b": 11}


def _squeeze(name: str) -> str:
    """A name as it is looked up: lower case, letters and digits only ("Choir Aahs" -> "choiraahs")."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


INSTRUMENT_IDS = {_squeeze(name): program for program, name in enumerate(GM_PROGRAMS)} | ALIASES


def instrument_name(instrument: int) -> str:
    """A readable name of an instrument id: its GM name in lower case, or "drums"."""
    return "drums" if instrument == DRUMS else GM_PROGRAMS[instrument].lower()


def parse_instruments(text: str) -> tuple[int, ...]:
    """Instrument ids (sorted, once each) of a comma-separated list of GM names ("violin", "Church Organ",
    "acoustic-guitar-nylon"; case, spaces and punctuation do not matter), short names (piano, organ,
    guitar, bass, harp, strings, choir, horn, sax, drums) or program numbers 0..127.

    Raises ValueError naming the first unknown one (with the closest names).
    """
    ids = set()
    for item in text.split(","):
        name = _squeeze(item)
        if name.isdigit() and int(name) < 128:
            ids.add(int(name))
        elif name in INSTRUMENT_IDS:
            ids.add(INSTRUMENT_IDS[name])
        else:
            close = difflib.get_close_matches(name, INSTRUMENT_IDS, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ValueError(f"unknown instrument {item.strip()!r}{hint}: give General MIDI names "
                             f"(piano, violin, cello, drums, ...) or program numbers 0-127, separated by commas")
    return tuple(sorted(ids))


def key_index(text: str) -> int:
    """The index in `KEY_NAMES` of a key name: a letter, an optional # or b, and m (or min, minor) for
    minor: "D", "Bm", "F#", "Ebm", "c# minor". Raises ValueError otherwise."""
    match = re.fullmatch(r"([A-Ga-g])([#b]?)\s*(m|min|minor|maj|major)?", text.strip())
    if match is None:
        raise ValueError(f"unknown key {text!r}: give a letter A-G, optionally # or b, and m for minor (D, Bm, F#, Ebm)")
    letter, accidental, mode = match.groups()
    pitch_class = (PITCH_CLASSES[letter.lower()] + {"#": 1, "b": -1, "": 0}[accidental]) % 12
    return pitch_class + (12 if mode in ("m", "min", "minor") else 0)


def condition(tokenizer: MidiTokenizer, prompt: list[int], sampler, *, instruments=(), bpm: float | None = None,
              key: int | None = None, ban: bool = True):
    """(prompt, sampler) for a piece asked to use `instruments` (ids), at `bpm`, in `key` (a `KEY_NAMES` index).

    With a conditioning tokenizer the prompt's header becomes the request: the fields asked for
    replace the prompt's own (a prompt MIDI file brings its header), and the conditioning tokens are
    banned after it. `ban` enforces the instruments as the module docstring says; `ban=False` leaves
    them to the model (to measure what it learned from the header). Tempo and key need a
    conditioning tokenizer (ValueError otherwise); instruments alone work with any.
    """
    if not (instruments or bpm is not None or key is not None):
        return prompt, sampler
    if bpm is not None and not MIN_BPM <= bpm <= MAX_BPM:
        raise ValueError(f"tempo {bpm:g} BPM is outside the {MIN_BPM:g}-{MAX_BPM:g} BPM the tokenizer covers")
    if any(i not in range(N_INSTRUMENTS) for i in instruments):
        raise ValueError(f"instruments must be ids 0-{N_INSTRUMENTS - 1} (GM programs, {DRUMS} = drums), got {instruments}")
    if key is not None and key not in range(len(KEY_NAMES)):
        raise ValueError(f"key must be an index into KEY_NAMES (0-{len(KEY_NAMES) - 1}), got {key}")
    banned = set()
    if tokenizer.config.conditioning:
        own = tokenizer.read_header(prompt) or Header()
        prompt = tokenizer.with_header(prompt, Header(
            tuple(instruments) or own.instruments,
            own.tempo_bin if bpm is None else tokenizer.tempo_bin(bpm),
            own.key if key is None else key))
        banned |= set(range(tokenizer.ranges["cond_inst"].start, tokenizer.ranges["cond_end"].stop))
    elif bpm is not None or key is not None:
        raise ValueError("this run's tokenizer has no conditioning tokens (its data was prepared without "
                         "--conditioning): it cannot be asked for a tempo or key; --instruments alone works")
    if instruments and ban:
        inst = tokenizer.ranges["inst"]
        banned |= {inst[i] for i in range(len(inst)) if i not in instruments}
        current = next((t - inst.start for t in reversed(prompt) if t in inst), 0)  # the decoder starts on piano
        if current not in instruments:
            prompt = prompt + [inst[min(instruments)]]
    banned |= set(sampler.banned_tokens)
    return prompt, dataclasses.replace(sampler, banned_tokens=tuple(sorted(banned)))
