"""`music continue`: a MIDI file longer than the training window is read into the state in chunks,
and the state is the one pass's (and the fp64 token-by-token twin's); the continuation is the one
the plain model gives from that state."""
import copy

import pytest
import torch

from eaglefinch.cli import main
from eaglefinch.music.generate import MusicClock, generate_music, music_sampler, prompt_ids, token_budget
from eaglefinch.music.run import MusicRun
from eaglefinch.music.tokenizer import MidiTokenizer, midi_to_notes
from eaglefinch.rwkv_core.checkpoint import save_model
from eaglefinch.rwkv_core.engine import Engine
from eaglefinch.rwkv_core.generate import Generation
from eaglefinch.rwkv_core.sampling import SamplerConfig
from tests.core.official_ckpt import random_official_state_dict
from tests.music.conftest import TINY_MODEL

PROMPT_NOTES = 600  # about 1,800 tokens: longer than the run's ctx_len (64) and than one prefill chunk (1,024)


@pytest.fixture(scope="module")
def random_run(tmp_path_factory, make_music_run):
    """A tiny music run whose every weight is random (an untrained one has zero output matrices, so
    its blocks would add nothing to the residual stream)."""
    folder = make_music_run(tmp_path_factory.mktemp("random") / "run")
    model, tokenizer = MusicRun.open(folder).load()
    model.load_state_dict(random_official_state_dict(
        "finch", n_layer=TINY_MODEL["n_layer"], n_embd=TINY_MODEL["n_embd"], vocab_size=tokenizer.vocab_size,
        head_size=TINY_MODEL["head_size"], mix_lora=TINY_MODEL["mix_lora_dim"],
        decay_lora=TINY_MODEL["decay_lora_dim"], decay="typical", seed=3))
    save_model(model, folder / "model.safetensors")
    return folder


@pytest.fixture
def flush_denormals():
    """Tiny values (an untrained model's embeddings, decayed states) slow the CPU's float arithmetic a
    hundredfold as denormals; flushing them to zero changes no compared digit."""
    torch.set_flush_denormal(True)
    yield
    torch.set_flush_denormal(False)


def rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def test_a_piece_longer_than_the_window_is_read_in_chunks_into_the_one_pass_state(random_run, kit, flush_denormals):
    run = MusicRun.open(random_run)
    model, tokenizer = run.load()
    prompt = prompt_ids(tokenizer, kit.scale(PROMPT_NOTES))
    gen = Generation(model, [prompt], 1)  # what generate and continue do with a prompt
    assert len(prompt) > gen.engine.prefill_tokens > run.ctx_len  # read in two chunks, past the window
    chunked, chunked_logits = gen.state, gen.logits[0]

    idx = torch.tensor([prompt])
    with torch.no_grad():
        logits, one_pass = model(idx)
        twin, state = copy.deepcopy(model).double(), None  # fp64, one token at a time: the recurrence itself
        for t in range(len(prompt)):
            twin_logits, state = twin(idx[:, t:t + 1], state)
    for name in ("att_shift", "wkv", "ffn_shift"):
        assert rel(getattr(chunked, name), getattr(one_pass, name)) <= 1e-5, name
        assert rel(getattr(chunked, name), getattr(state, name)) <= 1e-4, name
    assert rel(chunked_logits, logits[0, -1]) <= 1e-5
    assert rel(chunked_logits, twin_logits[0, -1]) <= 1e-4


def test_continue_writes_the_piece_and_the_plain_models_continuation(random_run, kit, tmp_path, capsys):
    source, out, seconds = tmp_path / "long.mid", tmp_path / "more.mid", 2.0
    kit.scale(PROMPT_NOTES).save(source)
    assert main(["music", "continue", str(source), "--checkpoint", str(random_run), "--out", str(out),
                 "--seconds", str(seconds), "--temperature", "0"]) == 0
    assert "reading the prompt" in capsys.readouterr().err

    # the reference: the whole file in one pass, then greedy token by token with the plain model
    model, tokenizer = MusicRun.open(random_run).load()
    prompt = prompt_ids(tokenizer, source)
    banned = list(music_sampler(tokenizer, SamplerConfig()).banned_tokens)
    clock, tokens = MusicClock(tokenizer, prompt), []
    with torch.no_grad():
        logits, state = model(torch.tensor([prompt]))
        for _ in range(token_budget(seconds)):
            scores = logits[0, -1].clone()
            scores[banned] = -torch.inf
            token = int(scores.argmax())
            if clock.after(token) > seconds:
                break
            clock.feed(token)
            tokens.append(token)
            logits, state = model(torch.tensor([[token]]), state)
    assert tokens, "the reference continued with nothing"
    expected = midi_to_notes(tokenizer.decode(prompt + tokens + [tokenizer.END]))
    assert midi_to_notes(out) == expected
    assert out.with_suffix(".png").is_file()


def test_continue_refuses_a_file_that_is_not_midi(untrained_run, tmp_path, capsys):
    bad = tmp_path / "notes.mid"
    bad.write_text("not MIDI")
    out = tmp_path / "out.mid"
    assert main(["music", "continue", str(bad), "--checkpoint", str(untrained_run), "--out", str(out)]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "not a readable MIDI file" in errors[0], errors
    assert not out.exists()


def test_a_long_piece_feeds_each_token_to_the_model_once(make_music_run, tmp_path, monkeypatch):
    """Memory and time per token stay constant however long the piece: the prompt is read once and
    each new token is one decode step from the carried state; nothing is ever read again."""
    ranges = MidiTokenizer().ranges
    favourites = (ranges["on"][60 * 16 + 8], ranges["off"][60], ranges["shift"][-1])  # a note, 1 s shifts
    model, tokenizer = MusicRun.open(make_music_run(tmp_path / "run", favourites)).load()
    fed = {"prefill": [], "decode": []}  # tokens fed by each call
    prefill, decode = Engine.prefill, Engine.decode

    def counted_prefill(self, slots, prompts, *args):
        fed["prefill"].append(sum(map(len, prompts)))
        return prefill(self, slots, prompts, *args)

    def counted_decode(self, slots, ids):
        fed["decode"].append(len(ids))
        return decode(self, slots, ids)

    monkeypatch.setattr(Engine, "prefill", counted_prefill)
    monkeypatch.setattr(Engine, "decode", counted_decode)
    ids = generate_music(model, tokenizer, [[tokenizer.START]], seconds=120, seed=0)[0]
    new = len(ids) - 2  # less <start> and the closing <end>
    assert new > 200
    assert fed["prefill"] == [1]
    assert set(fed["decode"]) == {1} and len(fed["decode"]) == new + 1  # + the token that would pass 120 s
