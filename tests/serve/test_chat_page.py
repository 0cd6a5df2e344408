"""The chat page at `GET /` of `eaglefinch serve`, driven in headless Chromium (Playwright): it shows
the model, streams a reply into the transcript equal to what the API gives for the same conversation,
keeps the conversation across turns (Enter sends, Shift+Enter is a new line) and shows a server's
error; on a real tiny visual run, an attached image gets the API's answer; with answers mocked in the
browser, the exact request a visual model gets (the image as a content part before the text) and Stop.
Needs Debian's chromium and the `playwright` package; without them the browser tests skip.

CHAT_SCREENSHOT=/tmp/chat.png saves a screenshot of the page after the replies."""
import base64
import io
import json
import os
import urllib.request
from pathlib import Path

import pytest

from tests.serve.test_server import call, start_server

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
HOW_TO_INSTALL = "to install: `apt-get install chromium` and `pip install playwright` (not `playwright install`)"


@pytest.fixture(scope="module")
def server(tiny_world_checkpoint):
    proc, base = start_server(tiny_world_checkpoint)
    yield base
    proc.terminate()
    assert proc.wait(timeout=30) == 0, proc.stdout.read().decode(errors="replace")


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip(f"the chat page test needs the `playwright` package: {HOW_TO_INSTALL}")
    if not CHROMIUM.exists():
        pytest.skip(f"the chat page test needs {CHROMIUM}: {HOW_TO_INSTALL}")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, server):
    """A browser page (for the chat page); page.errors: console errors and uncaught exceptions."""
    context = browser.new_context(viewport={"width": 900, "height": 700})
    page = context.new_page()
    page.set_default_timeout(20_000)
    page.errors = []
    page.on("console", lambda message: message.type == "error" and page.errors.append(message.text))
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    yield page
    context.close()


def open_chat(page, server, model="tiny"):
    page.goto(server + "/")
    page.wait_for_function(f"document.querySelector('#model').textContent.includes({model!r})")
    page.click("summary")   # open the settings


def settings(page, max_tokens, temperature):
    page.fill("#max-tokens", str(max_tokens))
    page.fill("#temperature", str(temperature))


def api_reply(server, messages, max_tokens):
    """What a non-streamed greedy request gives for the same conversation."""
    body = {"messages": messages, "max_tokens": max_tokens, "temperature": 0, "top_p": 0.7}
    status, text = call(server, "/v1/chat/completions", json.dumps(body).encode())
    assert status == 200, text
    return json.loads(text)["choices"][0]["message"]["content"].strip()


def wait_for_reply(page, count):
    """The text of the `count`-th assistant bubble, once it is done streaming."""
    page.wait_for_function(f"document.querySelectorAll('.assistant').length >= {count}"
                           " && !document.querySelector('.assistant.streaming')"
                           " && !document.querySelector('#send').disabled")
    return page.locator(".assistant").nth(count - 1).text_content().strip()


def test_get_root_serves_the_chat_page(server):
    with urllib.request.urlopen(server + "/", timeout=30) as response:
        assert response.status == 200
        assert response.headers["content-type"].startswith("text/html")
        html = response.read().decode()
    assert 'id="transcript"' in html and "/v1/chat/completions" in html


def test_the_page_streams_replies_equal_to_the_api_and_keeps_the_conversation(page, server):
    open_chat(page, server)
    assert page.text_content("#model").strip() == "tiny"
    assert page.is_hidden("#image")   # a text model: no image input
    settings(page, 20, 0)
    first = "Hello! Who are you?"
    want = api_reply(server, [{"role": "user", "content": first}], 20)
    assert want, "the tiny model's greedy reply is empty: pick another first message"

    page.fill("#message", first)
    page.click("#send")
    assert page.locator(".user").first.text_content() == first
    assert page.locator("#message").input_value() == ""
    got = wait_for_reply(page, 1)
    assert got and got == want

    # the second turn sent with Enter, a new line in it typed with Shift+Enter
    page.click("#message")
    page.keyboard.type("Tell me more.")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("Please.")
    page.keyboard.press("Enter")
    second = "Tell me more.\nPlease."
    assert page.locator(".user").nth(1).text_content() == second
    got = wait_for_reply(page, 2)
    want = api_reply(server, [{"role": "user", "content": first}, {"role": "assistant", "content": want},
                              {"role": "user", "content": second}], 20)
    assert got == want
    assert page.locator(".bubble.error").count() == 0
    assert page.errors == []
    if os.environ.get("CHAT_SCREENSHOT"):
        page.screenshot(path=os.environ["CHAT_SCREENSHOT"])


def test_a_request_the_server_refuses_shows_its_error(page, server):
    open_chat(page, server)
    settings(page, 20, 5)   # temperature over 2: a 400 naming the field
    page.fill("#message", "Hi")
    page.click("#send")
    error = page.locator(".assistant.error")
    error.wait_for()
    assert "temperature" in error.text_content()
    assert "error" in page.text_content("#status")
    assert not page.is_disabled("#send") and page.is_disabled("#stop")


def sse(*events):
    return "".join(f"data: {json.dumps(e) if isinstance(e, dict) else e}\n\n" for e in events)


def test_a_visual_model_gets_the_image_as_a_content_part_before_the_text(page, server):
    from PIL import Image
    png = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 40, 40)).save(png, format="PNG")
    png = png.getvalue()
    sent = []

    def models(route):
        route.fulfill(json={"object": "list", "data": [{"id": "eye", "object": "model", "modality": "visual"}]})

    def chat(route):
        sent.append(route.request.post_data_json)
        if len(sent) == 1:
            body = sse({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
                       {"choices": [{"index": 0, "delta": {"content": " A red"}}]},
                       {"choices": [{"index": 0, "delta": {"content": " square."}}]}, "[DONE]")
        else:   # an error in the stream, after some text
            body = sse({"choices": [{"index": 0, "delta": {"content": "Hm"}}]},
                       {"error": {"message": "the model failed while generating", "type": "server_error"}})
        route.fulfill(status=200, content_type="text/event-stream", body=body)
    page.route("**/v1/models", models)
    page.route("**/v1/chat/completions", chat)
    open_chat(page, server, model="eye")
    assert "visual" in page.text_content("#model") and page.is_visible("#image")
    page.fill("#system", "Look closely.")
    page.set_input_files("#image", files=[{"name": "red.png", "mimeType": "image/png", "buffer": png}])
    page.fill("#message", "What is this?")
    page.click("#send")
    assert wait_for_reply(page, 1) == "A red square."
    url = "data:image/png;base64," + base64.b64encode(png).decode()
    assert page.get_attribute(".user img", "src") == url   # the thumbnail
    body = sent[0]
    assert body["stream"] is True and body["max_tokens"] == 200 and body["temperature"] == 1.0 and body["top_p"] == 0.7
    assert body["messages"] == [{"role": "system", "content": "Look closely."},
                                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                             {"type": "text", "text": "What is this?"}]}]
    # the next turn (no image: plain text) carries the conversation; an error event is shown
    page.fill("#message", "Sure?")
    page.click("#send")
    page.locator(".assistant.error").wait_for()
    assert "the model failed while generating" in page.locator(".assistant.error").text_content()
    assert sent[1]["messages"][1:] == [body["messages"][1], {"role": "assistant", "content": "A red square."},
                                       {"role": "user", "content": "Sure?"}]
    assert page.errors == []


def test_a_visual_run_answers_an_attached_image_as_the_api_does(page, visual):
    base, _, images = visual   # a real server on a tiny visual run (tests/serve/test_server_modalities.py)
    png = sorted(images.glob("*.png"))[0]
    open_chat(page, base, model="run")
    settings(page, 12, 0)
    page.set_input_files("#image", str(png))
    page.fill("#message", "Describe the image.")
    page.click("#send")
    got = wait_for_reply(page, 1)
    url = "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode()
    want = api_reply(base, [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                         {"type": "text", "text": "Describe the image."}]}], 12)
    assert got == want and got
    assert page.errors == []


def test_stop_aborts_the_reply_and_its_turn_leaves_the_conversation(page, server):
    sent = []

    def chat(route):   # the first request gets no answer: it streams until stopped
        sent.append(route.request.post_data_json)
        if len(sent) > 1:
            route.fulfill(content_type="text/event-stream",
                          body=sse({"choices": [{"index": 0, "delta": {"content": "Yes."}}]}, "[DONE]"))
    page.route("**/v1/chat/completions", chat)
    open_chat(page, server)
    page.fill("#message", "Tell me a long story.")
    page.click("#send")
    page.wait_for_function("document.querySelector('#send').disabled && !document.querySelector('#stop').disabled")
    page.click("#stop")
    page.wait_for_function("document.querySelector('#status').textContent === 'stopped'")
    assert page.locator(".assistant").count() == 0   # nothing came: no empty bubble stays
    assert not page.is_disabled("#send") and page.is_disabled("#stop")
    page.fill("#message", "Short?")
    page.press("#message", "Enter")
    assert wait_for_reply(page, 1) == "Yes."
    assert sent[1]["messages"] == [{"role": "user", "content": "Short?"}]
    assert page.errors == []
