"""`eaglefinch serve` in a subprocess on a tiny random World-vocabulary model on the CPU, spoken to
with the real `openai` client: completions and chat, streamed and not, against `generate_text` (the
same model in-process); greedy answers under 32 concurrent clients equal to the same requests one at
a time; a client that leaves mid-stream frees its slot; bad requests get a 4xx and the server goes on."""
import concurrent.futures
import http.client
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import openai
import pytest

from eaglefinch.rwkv_core import load_model
from eaglefinch.rwkv_core.sampling import SamplerConfig
from eaglefinch.serve import ChatTemplate
from eaglefinch.text.generate import generate_text
from eaglefinch.text.tokenizer import WorldTokenizer

MAX_PROMPT_TOKENS = 64


@pytest.fixture(scope="module")
def checkpoint(tiny_world_checkpoint):
    return tiny_world_checkpoint


def call(base, path, body=None):
    """(status, text) of a GET, or of a POST of `body` (bytes) as JSON; any status, no exception."""
    request = urllib.request.Request(base + path, data=body, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(checkpoint, *options):
    """(process, base URL) of a server on a free port, once /health answers."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "eaglefinch", "serve", "--checkpoint", str(checkpoint),
                             "--port", str(port), "--quiet", *options], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if call(base, "/health")[0] == 200:
                break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the server did not start:\n" + proc.stdout.read().decode(errors="replace"))
        time.sleep(0.3)
    return proc, base


@pytest.fixture(scope="module")
def server(checkpoint):
    proc, base = start_server(checkpoint, "--max-batch", "8", "--max-prompt-tokens", str(MAX_PROMPT_TOKENS))
    yield base
    proc.terminate()   # SIGTERM: stops cleanly with exit status 0
    assert proc.wait(timeout=30) == 0, proc.stdout.read().decode(errors="replace")


def open_stream(base, body):
    """An HTTP connection with a streamed completion under way (its first event read)."""
    host, port = base.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    connection.request("POST", "/v1/completions", json.dumps({**body, "stream": True}),
                       {"content-type": "application/json"})
    response = connection.getresponse()
    assert response.status == 200 and response.readline().startswith(b"data:")
    return connection, response


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="none", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def reference(checkpoint):
    """generate_text on the same model in this process: what a greedy request must return."""
    model, tokenizer = load_model(checkpoint).eval(), WorldTokenizer()

    def greedy(prompt, max_tokens, stop=()):
        (text,), _ = generate_text(model, [prompt], max_tokens, SamplerConfig(temperature=0.0),
                                   tokenizer=tokenizer, stop=stop)
        return text
    return greedy


def metric(server, name):
    for line in call(server, "/metrics")[1].splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def test_models_and_health(client, server):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    assert json.loads(call(server, "/health")[1]) == {"status": "ok"}


def test_completion_greedy_equals_generate_text_streamed_or_not(client, reference):
    prompt = "The quick brown fox"
    want = reference(prompt, 20)
    got = client.completions.create(model="tiny", prompt=prompt, max_tokens=20, temperature=0)
    assert got.choices[0].text == want
    assert got.usage.prompt_tokens == len(WorldTokenizer().encode(prompt))
    assert got.usage.completion_tokens == 20 and got.choices[0].finish_reason == "length"
    stream = client.completions.create(model="tiny", prompt=prompt, max_tokens=20, temperature=0, stream=True)
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks) == want
    assert chunks[-1].choices[0].finish_reason == "length"


def test_stop_strings_cut_the_text(client, reference):
    prompt = "Once upon a time"
    full = reference(prompt, 30)
    stop = full[5:8]   # a piece of what the model will say: the answer ends just before it
    got = client.completions.create(model="tiny", prompt=prompt, max_tokens=30, temperature=0, stop=[stop])
    assert got.choices[0].text == full[:full.index(stop)] and got.choices[0].finish_reason == "stop"


def test_chat_uses_the_world_template_streamed_or_not(client, reference):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello!\n\nHow are you?"}]
    prompt = ChatTemplate().render(messages)
    assert prompt == "System: Be brief.\n\nUser: Hello!\nHow are you?\n\nAssistant:"
    want = reference(prompt, 24, stop=["\n\n"]).strip()
    got = client.chat.completions.create(model="tiny", messages=messages, max_tokens=24, temperature=0)
    assert got.choices[0].message.content == want and got.choices[0].message.role == "assistant"
    stream = client.chat.completions.create(model="tiny", messages=messages, max_tokens=24, temperature=0,
                                            stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream)
    assert text.strip() == want


def test_seeded_sampling_reproduces_and_n_gives_several(client, server):
    kwargs = dict(model="tiny", prompt="Roses are", max_tokens=12, temperature=1.0, top_p=0.9, seed=5)
    first = client.completions.create(**kwargs)
    assert client.completions.create(**kwargs).choices[0].text == first.choices[0].text
    computed = metric(server, "eaglefinch_prompt_tokens_computed_total")
    several = client.completions.create(**{**kwargs, "prompt": "Violets are"}, n=3)
    assert [c.index for c in several.choices] == [0, 1, 2]
    assert several.usage.completion_tokens == 36
    # the prompt is read once and forked; choice i samples with seed + i, as a request of its own
    assert metric(server, "eaglefinch_prompt_tokens_computed_total") - computed == several.usage.prompt_tokens
    alone = [client.completions.create(**{**kwargs, "prompt": "Violets are", "seed": 5 + i}).choices[0].text
             for i in range(3)]
    assert [c.text for c in several.choices] == alone and len(set(alone)) > 1


def test_a_conversation_that_goes_on_reads_only_its_new_messages(client, server, reference):
    system = {"role": "system", "content": "You are a patient tutor who answers every question about "
                                           "birds with one short and friendly sentence."}
    first = [system, {"role": "user", "content": "What do robins eat?"}]
    then = [system, {"role": "user", "content": "Why do geese fly in a V?"}]
    tokens = WorldTokenizer().encode
    system_tokens = len(tokens(ChatTemplate().turn("system", system["content"])))
    # nothing cached yet (no other test uses this system prompt); then its system message; then all
    for messages, cached in ((first, 0), (then, system_tokens), (then, None)):
        computed = metric(server, "eaglefinch_prompt_tokens_computed_total")
        got = client.chat.completions.create(model="tiny", messages=messages, max_tokens=12, temperature=0)
        prompt = ChatTemplate().render(messages)
        # the same answer as the whole prompt read by generate_text, without any cache
        assert got.choices[0].message.content == reference(prompt, 12, stop=["\n\n"]).strip()
        assert got.usage.prompt_tokens == len(tokens(prompt))
        cached = got.usage.prompt_tokens if cached is None else cached
        assert got.usage.prompt_tokens_details.cached_tokens == cached
        assert metric(server, "eaglefinch_prompt_tokens_computed_total") - computed == got.usage.prompt_tokens - cached
    assert metric(server, "eaglefinch_cache_hits_total") >= 2


def test_32_concurrent_greedy_clients_get_what_each_gets_alone(client):
    prompts = [f"Story number {i}: there was a" + " very" * (i % 5) for i in range(32)]

    def ask(prompt):
        return client.completions.create(model="tiny", prompt=prompt, max_tokens=16 + len(prompt) % 7,
                                         temperature=0).choices[0].text
    alone = [ask(p) for p in prompts]
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        together = list(pool.map(ask, prompts))
    assert together == alone


def test_a_client_that_leaves_mid_stream_frees_its_slot(server):
    connection, _ = open_stream(server, {"prompt": "Tell me everything", "max_tokens": 100000, "temperature": 0})
    assert metric(server, "eaglefinch_active_sequences") == 1
    connection.close()   # the client goes away mid-stream
    deadline = time.monotonic() + 10
    while metric(server, "eaglefinch_active_sequences") != 0:
        assert time.monotonic() < deadline, "the abandoned stream still holds its slot"
        time.sleep(0.05)


BAD_REQUESTS = [
    ("/v1/completions", b"{not json", "JSON"),
    ("/v1/completions", {"prompt": "hi", "temperature": "hot"}, "temperature"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 0}, "max_tokens"),
    ("/v1/completions", {"prompt": "hi", "top_p": 1.5}, "top_p"),
    ("/v1/completions", {"prompt": "hi", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ("/v1/completions", {"prompt": ""}, "prompt"),
    ("/v1/completions", {"prompt": "word " * (4 * MAX_PROMPT_TOKENS)}, "at most"),
    ("/v1/completions", {"max_tokens": 3}, "prompt"),
    ("/v1/chat/completions", {"messages": []}, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "wizard", "content": "hi"}]}, "role"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": 5}]}, "content"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]}, "reads no images"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "sound"}]}]}, "type"),
    ("/v1/completions", {"prompt": "hi", "state": "saved"}, "--state-dir"),
    ("/v1/music/generate", {"seconds": 5}, "text model"),
]


@pytest.mark.parametrize("path,body,named", BAD_REQUESTS, ids=[f"{p}:{n}" for p, _, n in BAD_REQUESTS])
def test_bad_requests_get_a_400_that_names_the_problem_and_the_server_goes_on(server, client, path, body, named):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    status, text = call(server, path, content)
    assert status == 400, text
    error = json.loads(text)["error"]
    assert named.lower() in error["message"].lower() and error["type"] == "invalid_request_error"
    assert client.completions.create(model="tiny", prompt="still there?", max_tokens=2, temperature=0).choices


def test_sigterm_with_a_stream_in_flight_cancels_it_and_exits_0(checkpoint):
    proc, base = start_server(checkpoint, "--shutdown-timeout", "1")
    connection, response = open_stream(base, {"prompt": "Go on", "max_tokens": 100000, "temperature": 0})
    proc.terminate()
    assert proc.wait(timeout=30) == 0, proc.stdout.read().decode(errors="replace")
    connection.close()
