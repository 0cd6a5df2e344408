"""`eaglefinch serve` on a tiny visual run and a tiny music run, and per-request states: an image
question answers as `visual.caption.answer` does and a repeat reads it from the cache; a music
request returns the MIDI file `generate_music` makes with the same seed; bad images, MIDI and
requests for the wrong modality get a 400 and the server goes on."""
import base64
import http.client
import io
import json
import urllib.request

import mido
import pytest
import torch

from eaglefinch.music.generate import generate_music, prompt_ids
from eaglefinch.music.run import MusicRun
from eaglefinch.rwkv_core import load_model
from eaglefinch.rwkv_core.sampling import SamplerConfig
from eaglefinch.text.generate import generate_text
from eaglefinch.text.tokenizer import WorldTokenizer
from eaglefinch.visual.caption import answer
from eaglefinch.visual.images import load_image
from eaglefinch.visual.run import VisualRun

from tests.music.conftest import write_music_run
from tests.serve.test_server import call, metric, start_server


def post(base, path, body):
    status, text = call(base, path, json.dumps(body).encode())
    return status, (json.loads(text) if text.startswith("{") else text)


def image_message(url, text="Describe the image."):
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                         {"type": "text", "text": text}]}]


def data_url(raw):
    return "data:image/png;base64," + base64.b64encode(raw).decode()


def test_an_image_question_answers_as_caption_does_and_a_repeat_reads_it_from_the_cache(visual):
    base, run, images = visual
    png = sorted(images.glob("*.png"))[0]
    vlm, tokenizer = VisualRun.open(run).load()
    want = answer(vlm, tokenizer, [load_image(png)], "Describe the image.", max_tokens=12)[0]
    body = {"messages": image_message(data_url(png.read_bytes())), "max_tokens": 12, "temperature": 0}
    status, first = post(base, "/v1/chat/completions", body)
    assert status == 200 and first["choices"][0]["message"]["content"] == want
    computed = metric(base, "eaglefinch_prompt_tokens_computed_total")
    # the same image by path (the server was given its folder): same answer, every position cached
    status, again = post(base, "/v1/chat/completions", {**body, "messages": image_message(str(png))})
    assert status == 200 and again["choices"][0]["message"]["content"] == want
    assert again["usage"]["prompt_tokens_details"]["cached_tokens"] == again["usage"]["prompt_tokens"]
    assert metric(base, "eaglefinch_prompt_tokens_computed_total") == computed
    # another question about it: the image (and the text before it) comes from the cache
    status, other = post(base, "/v1/chat/completions", {**body, "messages": image_message(str(png), "What is it?")})
    cached = other["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert status == 200 and vlm.n_image_tokens <= cached < other["usage"]["prompt_tokens"]


@pytest.mark.parametrize("url, message", [
    ("data:image/png;base64,not base64!", "not valid base64"),
    (data_url(b"these bytes are not an image"), "not an image"),
    (data_url(bytes(60_000)), "over 52,428 bytes"),
    ("/etc/passwd", "not a file under"),
    ("http://example.com/cat.png", "not a file under"),
])
def test_bad_images_get_a_400_and_the_server_goes_on(visual, url, message):
    base, _, images = visual
    status, body = post(base, "/v1/chat/completions", {"messages": image_message(url), "max_tokens": 3})
    assert status == 400 and message in body["error"]["message"], body
    png = sorted(images.glob("*.png"))[1]
    status, _ = post(base, "/v1/chat/completions", {"messages": image_message(data_url(png.read_bytes())),
                                                    "max_tokens": 3})
    assert status == 200


def test_a_body_over_the_limit_is_refused_before_it_is_read(visual):
    base, _, _ = visual   # --max-image-mb 0.05: bodies up to 0.05 MiB x 4/3 + 8 MiB
    host, port = base.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    connection.putrequest("POST", "/v1/chat/completions")
    connection.putheader("content-type", "application/json")
    connection.putheader("content-length", str(9 * 2 ** 20))
    connection.endheaders()   # the answer comes without a byte of the body sent
    response = connection.getresponse()
    assert response.status == 413 and "request body is over" in json.loads(response.read())["error"]["message"]
    connection.close()


def test_two_images_or_music_on_a_visual_server_get_a_400(visual):
    base, _, images = visual
    url = data_url(sorted(images.glob("*.png"))[0].read_bytes())
    two = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}] * 2}]
    status, body = post(base, "/v1/chat/completions", {"messages": two})
    assert status == 400 and "one image per conversation" in body["error"]["message"]
    status, body = post(base, "/v1/music/generate", {"seconds": 2})
    assert status == 400 and "visual model" in body["error"]["message"]
    assert json.loads(call(base, "/v1/models")[1])["data"][0]["modality"] == "visual"


@pytest.fixture(scope="module")
def music(tmp_path_factory):
    run = write_music_run(tmp_path_factory.mktemp("music") / "run")
    proc, base = start_server(run)
    yield base, run
    proc.terminate()
    assert proc.wait(timeout=30) == 0


def fetch_midi(base, body):
    """The bytes of a music request's MIDI reply (status 200 and type audio/midi checked)."""
    request = urllib.request.Request(base + "/v1/music/generate", json.dumps(body).encode(),
                                     {"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.status == 200 and response.headers["content-type"] == "audio/midi"
        return response.read()


def midi_bytes(midi):
    out = io.BytesIO()
    midi.save(file=out)
    return out.getvalue()


def test_a_music_request_returns_the_midi_generate_music_makes(music):
    base, run = music
    model, tokenizer = MusicRun.open(run).load()
    sampler = SamplerConfig(temperature=1.0, top_k=20)
    for prompt_midi in (None, midi_bytes(tokenizer.decode(generate_music(model, tokenizer, [prompt_ids(tokenizer)],
                                                                         1.0, sampler, seed=1)[0]))):
        prompt = prompt_ids(tokenizer, prompt_midi)
        want = tokenizer.decode(generate_music(model, tokenizer, [prompt], 3.0, sampler, seed=7)[0])
        body = {"seconds": 3.0, "temperature": 1.0, "top_k": 20, "seed": 7}
        if prompt_midi:
            body["prompt_midi"] = base64.b64encode(prompt_midi).decode()
        got = fetch_midi(base, body)
        midi = mido.MidiFile(file=io.BytesIO(got))
        assert got == midi_bytes(want) and len(midi.tracks) >= 1 and midi.length > 0


@pytest.mark.parametrize("path, body, message", [
    ("/v1/music/generate", {"prompt_midi": base64.b64encode(b"MThd nonsense").decode()}, "not a readable MIDI"),
    ("/v1/music/generate", {"prompt_midi": "%%%"}, "not valid base64"),
    ("/v1/music/generate", {"seconds": -1}, "seconds"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}, "music model"),
    ("/v1/completions", {"prompt": "hi"}, "music model"),
])
def test_bad_music_requests_get_a_400(music, path, body, message):
    base, _ = music
    status, reply = post(base, path, body)
    assert status == 400 and message in reply["error"]["message"], reply
    assert mido.MidiFile(file=io.BytesIO(fetch_midi(base, {"seconds": 0.5})))


def test_a_request_starts_from_a_named_state_file(tiny_world_checkpoint, tmp_path):
    model, tokenizer = load_model(tiny_world_checkpoint).eval(), WorldTokenizer()
    with torch.no_grad():
        _, state = model(torch.tensor([tokenizer.encode("We were talking about birds.")]))
    state.save(tmp_path / "birds.safetensors")
    greedy = SamplerConfig(temperature=0.0)
    (want,), _ = generate_text(model, ["Tell me more"], 10, greedy, tokenizer=tokenizer, state=state)
    (plain,), _ = generate_text(model, ["Tell me more"], 10, greedy, tokenizer=tokenizer)
    proc, base = start_server(tiny_world_checkpoint, "--state-dir", str(tmp_path))
    try:
        body = {"prompt": "Tell me more", "max_tokens": 10, "temperature": 0}
        assert post(base, "/v1/completions", {**body, "state": "birds"})[1]["choices"][0]["text"] == want
        assert post(base, "/v1/completions", body)[1]["choices"][0]["text"] == plain != want
        for name, message in (("fish", "no state named"), ("../birds", "no state named")):
            status, reply = post(base, "/v1/completions", {**body, "state": name})
            assert status == 400 and message in reply["error"]["message"]
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0
