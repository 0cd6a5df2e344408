"""The OpenAI-compatible HTTP API over the scheduler: /v1/models, /v1/completions, /v1/chat/completions
(streamed as server-sent events, or not), /v1/music/generate (music runs), /health, /metrics, and the
chat page at /.

    app = create_app(model, tokenizer, model_name="finch")   # then: uvicorn.run(app)

Each request becomes a group of `n` scheduler requests that share one reading of the prompt; their
tokens come back on the scheduler's thread and are handed to the request's asyncio queue. Text,
stop strings, images and the chat template live here; the scheduler knows token ids and segments
only. A chat prompt is cut at message boundaries (and around an image), so the scheduler caches the
state after each message and a conversation that goes on reads only what is new. Bad requests get
an OpenAI-style error body and a 4xx.
"""
import asyncio
import base64
import binascii
import contextlib
import hashlib
import io
import json
import re
import time
import uuid
from pathlib import Path
from typing import Literal

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from eaglefinch.music.generate import MusicClock, music_sampler, prompt_ids, token_budget
from eaglefinch.music.tokenizer import MidiError, MidiTokenizer
from eaglefinch.rwkv_core.checkpoint import CheckpointError, initial_state_from_file
from eaglefinch.rwkv_core.sampling import SEED_LIMIT, SamplerConfig, random_seed
from eaglefinch.rwkv_core.scheduler import ImageSegment, Scheduler
from eaglefinch.text.generate import TextStream, padding_ids
from eaglefinch.visual.images import DEFAULT_MAX_PIXELS, ImageError, load_image
from eaglefinch.visual.prompt import IMAGE_PLACEHOLDER, place_image

from .chat_template import ChatTemplate

CHAT_PAGE = Path(__file__).parent / "static" / "chat.html"
UNION_BRANCHES = {"str", "int", "float", "bool", "list", "dict"}
STATE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class APIError(Exception):
    def __init__(self, status, message, param=None, kind="invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind


class Sampling(BaseModel):
    """The sampling fields every endpoint takes (OpenAI's names; top_k is our extension)."""
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0)
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    seed: int | None = Field(default=None, ge=0, le=SEED_LIMIT)

    def sampler(self, banned=()) -> SamplerConfig:
        try:
            return SamplerConfig(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                                 presence_penalty=self.presence_penalty, frequency_penalty=self.frequency_penalty,
                                 banned_tokens=tuple(banned))
        except ValueError as e:
            raise APIError(400, str(e)) from None


class TextFields(Sampling):
    """What the completion and chat endpoints add; `state` (extension) names a state file of the
    server's --state-dir to start from."""
    stop: str | list[str] | None = None
    n: int = Field(default=1, ge=1, le=16)
    stream: bool = False
    user: str | None = None
    state: str | None = None

    def stops(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > 4:
            raise APIError(400, "stop takes at most 4 strings", "stop")
        return stops


class CompletionBody(TextFields):
    prompt: str


class ImageURL(BaseModel):
    url: str


class ContentPart(BaseModel):
    type: Literal["text", "image_url"]
    text: str | None = None
    image_url: ImageURL | None = None


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str | list[ContentPart]


class ChatBody(TextFields):
    messages: list[ChatMessage] = Field(min_length=1)


class MusicBody(Sampling):
    """A music request: continue `prompt_midi` (a MIDI file as base64; none: a piece from its start)
    by `seconds` of music."""
    prompt_midi: str | None = None
    seconds: float = Field(default=20.0, gt=0.0, le=600.0)


class Server:
    """What the endpoints share: the scheduler, the tokenizer, limits and counters."""

    def __init__(self, model, tokenizer, vlm, model_name, max_batch, max_prompt_tokens, default_max_tokens,
                 template, cache_mb, state_dir, allow_local_files, max_image_bytes, engine_args):
        self.vlm = vlm
        self.modality = "visual" if vlm is not None else "music" if isinstance(tokenizer, MidiTokenizer) else "text"
        self.loop = None   # the event loop the requests are served on (set by the first one)
        self.told = []     # (queue, event) told by the scheduler's thread since its last step
        self.scheduler = Scheduler(model, max_batch=max_batch, cache_mb=cache_mb, after_step=self._hand_over,
                                   read_image=self._read_image if vlm is not None else None, **engine_args)
        self.model, self.tokenizer, self.model_name = model, tokenizer, model_name
        self.max_prompt_tokens, self.default_max_tokens = max_prompt_tokens, default_max_tokens
        self.template = template
        self.state_dir = Path(state_dir) if state_dir else None
        self.local_files = Path(allow_local_files).resolve() if allow_local_files else None
        self.max_image_bytes = max_image_bytes
        self.max_body_bytes = max_image_bytes * 4 // 3 + 8 * 2 ** 20
        self.banned = () if self.modality == "music" else padding_ids(tokenizer, model.cfg.vocab_size)
        self.prompt_tokens_total = 0
        self.states = {}   # name -> (file version, cache key, RWKVState) of per-request states read so far
        self.created = int(time.time())

    # ---- prompts -------------------------------------------------------------------------------
    def require(self, modality):
        if self.modality != modality and not (modality == "text" and self.modality == "visual"):
            other = "POST /v1/music/generate" if self.modality == "music" else "/v1/chat/completions"
            raise APIError(400, f"this server runs a {self.modality} model: use {other}", "model")

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text) if text else []

    def check_length(self, segments, param):
        total = sum(len(s) for s in segments)
        if total == 0:
            raise APIError(400, f"{param} is empty: give at least one character", param)
        if total > self.max_prompt_tokens:
            raise APIError(400, f"{param} has {total} tokens; this server takes at most "
                                f"{self.max_prompt_tokens} (--max-prompt-tokens)", param)

    async def chat_segments(self, messages) -> list:
        """The prompt of a conversation: token ids per message, an ImageSegment where an image is."""
        segments, images = [], 0
        for i, m in enumerate(messages):
            if isinstance(m.content, str):
                segments.append(self.encode(self.template.turn(m.role, m.content)))
                continue
            texts, image = [], None
            for part in m.content:
                if part.type == "text":
                    if part.text is None:
                        raise APIError(400, f"messages.{i}: a text part needs its text", "messages")
                    if IMAGE_PLACEHOLDER in part.text and self.modality == "visual":
                        raise APIError(400, f"messages.{i}: {IMAGE_PLACEHOLDER} is reserved; send the image as an "
                                            "image_url part", "messages")
                    texts.append(part.text)
                else:
                    if self.modality != "visual":
                        raise APIError(400, f"messages.{i}: this server runs a {self.modality} model, which reads "
                                            "no images", "messages")
                    if m.role != "user" or images or part.image_url is None:
                        raise APIError(400, f"messages.{i}: one image per conversation, in a user message, as "
                                            "{'type': 'image_url', 'image_url': {'url': ...}}", "messages")
                    image = await self.image_segment(part.image_url.url, f"messages.{i}")
                    images += 1
                    texts.append(IMAGE_PLACEHOLDER)
            text = "\n".join(texts)
            if image is None:
                segments.append(self.encode(self.template.turn(m.role, text)))
                continue
            # the image goes where the visual run was trained to see it (before/after/around the text)
            before, after = self.template.turn(m.role, place_image(text, self.vlm.cfg.image_position)).split(
                IMAGE_PLACEHOLDER)
            segments += [self.encode(before), image, self.encode(after)]
        segments.append(self.encode(self.template.reply_start))
        return [s for s in segments if len(s)]

    async def image_segment(self, url: str, where: str) -> ImageSegment:
        """An image_url (a base64 data: URL, or a file under --allow-local-files) read and checked."""
        if url.startswith("data:"):
            header, _, data = url.partition(",")
            if not header.endswith(";base64"):
                raise APIError(400, f"{where}: an image data: URL must be base64 (data:image/png;base64,...)", "messages")
            if len(data) * 3 // 4 > self.max_image_bytes:
                raise APIError(400, f"{where}: the image is over {self.max_image_bytes:,} bytes", "messages")
            try:
                raw = base64.b64decode(data, validate=True)
            except (binascii.Error, ValueError):
                raise APIError(400, f"{where}: the image data is not valid base64", "messages") from None
        elif self.local_files is not None:
            path = Path(url.removeprefix("file://")).resolve()
            if not path.is_relative_to(self.local_files) or not path.is_file():
                raise APIError(400, f"{where}: {url} is not a file under the server's --allow-local-files folder",
                               "messages")
            if path.stat().st_size > self.max_image_bytes:
                raise APIError(400, f"{where}: the image is over {self.max_image_bytes:,} bytes", "messages")
            raw = path.read_bytes()
        else:
            raise APIError(400, f"{where}: images come as base64 data: URLs (local files only where the server "
                                "was started with --allow-local-files)", "messages")

        def decode():
            pixels = self.vlm.encoder.preprocess(load_image(raw, DEFAULT_MAX_PIXELS, name="the image"))
            return ImageSegment(pixels, self.vlm.n_image_tokens, hashlib.sha256(raw).hexdigest())
        try:
            return await asyncio.to_thread(decode)
        except ImageError as e:
            raise APIError(400, f"{where}: {e}", "messages") from None

    def _hand_over(self):
        """On the scheduler's thread, after each step: its tokens go to the event loop in one wake-up
        (not one per token: at 64 streams that would be 64 wake-ups of the loop per step)."""
        if self.told:
            told, self.told = self.told, []
            self.loop.call_soon_threadsafe(_deliver, told)

    def _read_image(self, pixels):
        """The scheduler's hook for an image whose prefix state it has not cached: its embeddings (the
        encoder's tokens from the model's feature cache when it saw this image before, e.g. under
        another question) and its scan span."""
        embeds = self.vlm.cached_image_embeds(pixels[None])[0]
        spans = self.vlm.scan_spans([(0, len(embeds))])
        return embeds, spans[0] if spans else None

    def initial_state(self, name):
        """(cache key, RWKVState) of a per-request state file of --state-dir, or ("", None)."""
        if name is None:
            return "", None
        if self.state_dir is None:
            raise APIError(400, "this server takes no per-request states (start it with --state-dir)", "state")
        files = [self.state_dir / (name + ext) for ext in (".safetensors", ".pth")] if STATE_NAME.fullmatch(name) else []
        path = next((f for f in files if f.is_file()), None)
        if path is None:
            raise APIError(400, f"no state named {name!r} in the server's --state-dir", "state")
        stat = path.stat()
        version = (str(path), stat.st_mtime_ns, stat.st_size)   # read again only when the file changes
        if name not in self.states or self.states[name][0] != version:
            try:
                state = initial_state_from_file(self.model, path)
            except (CheckpointError, ValueError) as e:
                raise APIError(400, f"state {name!r}: {e}", "state") from None
            self.states[name] = (version, "state:" + hashlib.sha256(path.read_bytes()).hexdigest(), state)
        return self.states[name][1:]

    # ---- generation ----------------------------------------------------------------------------
    async def tokens(self, segments, n, max_tokens, sampler, seed, stop_ids=(0,), state=("", None)):
        """Generate n continuations of the prompt: yields (index, token, None) for every token and
        (index, None, reason) at each end; the first item is the list of scheduler requests. A
        client that goes away (the task is cancelled) cancels them."""
        self.loop = asyncio.get_running_loop()
        events = asyncio.Queue()
        seed = seed if seed is not None else random_seed()
        callbacks = [lambda token, reason, index=index: self.told.append((events, (index, token, reason)))
                     for index in range(n)]
        key, initial = state
        requests = self.scheduler.submit_group(segments, max_tokens, sampler,
                                               [(seed + i) % (SEED_LIMIT + 1) for i in range(n)], callbacks,
                                               stop_ids, initial_state=initial, initial_key=key)
        self.prompt_tokens_total += requests[0].prompt_tokens
        try:
            yield requests
            ended = 0
            while ended < n:
                index, token, reason = await events.get()
                if reason == "error":
                    raise APIError(500, "the model failed while generating", kind="server_error")
                ended += reason is not None
                yield index, token, reason
        finally:
            for request in requests:
                request.cancel()

    async def text(self, segments, body: TextFields, sampler, stops, state, usage: dict):
        """Generate `body.n` texts with `sampler` from `state` (see initial_state): yields (index,
        text, None) for every piece of text and (index, "", finish_reason) at each end; fills `usage`
        at the end."""
        streams = [TextStream(self.tokenizer, stops) for _ in range(body.n)]
        done = [False] * body.n
        completion = 0
        events = self.tokens(segments, body.n, body.max_tokens or self.default_max_tokens,
                             sampler, body.seed, state=state)
        async with contextlib.aclosing(events):
            requests = await anext(events)
            async for index, token, reason in events:
                stream = streams[index]
                if done[index]:
                    continue
                if reason is None:
                    completion += 1
                    piece = stream.feed(token)
                    if stream.stopped:   # a stop string: this sequence ends here
                        requests[index].cancel()
                        reason = "stop"
                    if piece:
                        yield index, piece, None
                    if reason is None:
                        continue
                done[index] = True
                piece = stream.finish()
                if piece:
                    yield index, piece, None
                yield index, "", "stop" if reason in ("stop", "cancelled") else reason
        prompt = requests[0].prompt_tokens
        usage.update(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion,
                     prompt_tokens_details={"cached_tokens": requests[0].cached_tokens})

    async def music(self, body: MusicBody) -> bytes:
        """A MIDI file: the prompt continued by body.seconds of music (as `generate_music` does it)."""
        tok = self.tokenizer
        try:
            prompt = prompt_ids(tok, base64.b64decode(body.prompt_midi, validate=True) if body.prompt_midi else None)
        except (binascii.Error, ValueError) as e:   # MidiError is a ValueError
            message = str(e) if isinstance(e, MidiError) else "prompt_midi is not valid base64"
            raise APIError(400, message, "prompt_midi") from None
        self.check_length([prompt], "prompt_midi")
        clock, piece = MusicClock(tok, prompt), []
        events = self.tokens([prompt], 1, body.max_tokens or token_budget(body.seconds),
                             music_sampler(tok, body.sampler()), body.seed, stop_ids=(tok.END,))
        async with contextlib.aclosing(events):
            await anext(events)
            async for _, token, reason in events:
                if reason is not None or clock.after(token) > body.seconds:
                    break
                clock.feed(token)
                piece.append(token)
        out = io.BytesIO()
        tok.decode(prompt + piece + [tok.END]).save(file=out)
        return out.getvalue()


class BodyLimit:
    """Refuses a request whose body is over `max_bytes` (the largest image as base64, and room)
    before it is read: a 413. Plain ASGI, so streamed responses pass through untouched (Starlette's
    BaseHTTPMiddleware would copy every SSE chunk through a stream of its own)."""

    def __init__(self, app, max_bytes):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            size = dict(scope["headers"]).get(b"content-length", b"0")
            if not size.isdigit() or int(size) > self.max_bytes:
                return await _error_body(413, f"the request body is over {self.max_bytes:,} bytes")(scope, receive, send)
        await self.app(scope, receive, send)


def _deliver(told):
    for events, event in told:
        events.put_nowait(event)


def _error_body(status, message, param=None, kind="invalid_request_error"):
    return JSONResponse(status_code=status, content={"error": {"message": message, "type": kind,
                                                               "param": param, "code": None}})


def create_app(model, tokenizer, *, vlm=None, model_name="eaglefinch", max_batch=16, max_prompt_tokens=8192,
               default_max_tokens=256, template=None, cache_mb=512, state_dir=None, allow_local_files=None,
               max_image_bytes=20 * 2 ** 20, engine_args=None) -> FastAPI:
    """The FastAPI app serving `model` (an RWKV in eval mode) with `tokenizer`: a text model with the
    World tokenizer or a run's SubsetTokenizer, a visual run (`vlm`, its VisualRWKV; `model` is
    vlm.model) or a music run (its MidiTokenizer).

    template: the chat format (default: RWKV World). cache_mb: memory for states after prompt
    prefixes (0: no cache). state_dir: a folder of state files that requests may name (`"state":
    "NAME"` reads NAME.safetensors or NAME.pth). allow_local_files: a folder whose images chat
    requests may name by path. engine_args: passed on to the Engine."""
    server = Server(model, tokenizer, vlm, model_name, max_batch, max_prompt_tokens, default_max_tokens,
                    template or ChatTemplate(), cache_mb, state_dir, allow_local_files, max_image_bytes,
                    engine_args or {})

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        server.scheduler.close(timeout=10)   # on shutdown (SIGTERM): in-flight requests end "cancelled"

    app = FastAPI(title="eaglefinch", description="Eagle and Finch models behind the OpenAI API", lifespan=lifespan)
    app.state.server = server
    app.add_middleware(BodyLimit, max_bytes=server.max_body_bytes)

    @app.exception_handler(APIError)
    async def api_error(_request, e: APIError):
        return _error_body(e.status, e.message, e.param, e.kind)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request, e: RequestValidationError):
        # the most specific error; pydantic names the union branches it tried ("str", "list[...]")
        # in the location, which says nothing to the client
        first = max(e.errors(), key=lambda err: len(err.get("loc", ())), default={})
        where = ".".join(str(p) for p in first.get("loc", ())[1:] if p not in UNION_BRANCHES and "[" not in str(p))
        return _error_body(400, f"{where or 'body'}: {first.get('msg', 'invalid request')}", where or None)

    @app.get("/", include_in_schema=False)
    async def chat_page():
        return FileResponse(CHAT_PAGE, media_type="text/html")

    @app.get("/health")
    async def health():
        if server.scheduler.error is not None:
            return _error_body(503, f"the scheduler stopped: {server.scheduler.error}", kind="server_error")
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": server.model_name, "object": "model", "created": server.created,
                                            "owned_by": "eaglefinch", "modality": server.modality}]}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics():
        s, cache = server.scheduler, server.scheduler.cache
        lines = [
            ("eaglefinch_queue_length", "gauge", "requests waiting for a slot", s.queue_length),
            ("eaglefinch_reading_prompts", "gauge", "requests whose prompt is being read", len(s.reading)),
            ("eaglefinch_active_sequences", "gauge", "sequences in the running batch", len(s.active)),
            ("eaglefinch_generated_tokens_total", "counter", "tokens generated", s.tokens_generated),
            ("eaglefinch_prompt_tokens_total", "counter", "prompt tokens of all requests", server.prompt_tokens_total),
            ("eaglefinch_prompt_tokens_computed_total", "counter", "prompt tokens run through the model",
             s.prompt_tokens_computed),
            ("eaglefinch_prompt_tokens_cached_total", "counter", "prompt tokens read from the prefix cache",
             s.cached_tokens),
            ("eaglefinch_cache_hits_total", "counter", "requests that started from a cached prefix", cache.hits),
            ("eaglefinch_cache_misses_total", "counter", "requests with no cached prefix", cache.misses),
            ("eaglefinch_cache_entries", "gauge", "states in the prefix cache", len(cache.entries)),
            ("eaglefinch_cache_bytes", "gauge", "memory the prefix cache holds", cache.bytes),
        ]
        return "".join(f"# HELP {name} {text}\n# TYPE {name} {kind}\n{name} {value}\n"
                       for name, kind, text, value in lines)

    @app.post("/v1/completions")
    async def completions(body: CompletionBody):
        server.require("text")
        segments = [server.encode(body.prompt)]
        server.check_length(segments, "prompt")
        return await respond(body, segments, body.stops(), chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatBody):
        server.require("text")
        segments = await server.chat_segments(body.messages)
        server.check_length(segments, "messages")
        return await respond(body, segments, server.template.stop + body.stops(), chat=True)

    @app.post("/v1/music/generate")
    async def music(body: MusicBody):
        server.require("music")
        return Response(await server.music(body), media_type="audio/midi",
                        headers={"content-disposition": 'attachment; filename="eaglefinch.mid"'})

    async def respond(body, segments, stops, chat):
        sampler = body.sampler(server.banned)   # bad options: a 400 now, not in the stream
        state = server.initial_state(body.state)
        created, rid = int(time.time()), ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        kind = "chat.completion" if chat else "text_completion"

        usage = {}
        pieces = server.text(segments, body, sampler, stops, state, usage)
        if not body.stream:
            texts, reasons = [""] * body.n, [None] * body.n
            async with contextlib.aclosing(pieces):
                async for index, piece, reason in pieces:
                    texts[index] += piece
                    reasons[index] = reason or reasons[index]
            if chat:
                choices = [{"index": i, "message": {"role": "assistant", "content": texts[i].strip()},
                            "finish_reason": reasons[i]} for i in range(body.n)]
            else:
                choices = [{"index": i, "text": texts[i], "logprobs": None, "finish_reason": reasons[i]}
                           for i in range(body.n)]
            return {"id": rid, "object": kind, "created": created, "model": server.model_name,
                    "choices": choices, "usage": usage}

        # every chunk is the same JSON but for its choice: written once, the choice filled in per piece
        head = json.dumps({"id": rid, "object": "chat.completion.chunk" if chat else "text_completion",
                           "created": created, "model": server.model_name})[:-1] + ', "choices": ['

        def chunk(index, piece, reason, first=False):
            if chat:
                delta = {"role": "assistant", "content": ""} if first else ({"content": piece} if piece else {})
                choice = {"index": index, "delta": delta, "finish_reason": reason}
            else:
                choice = {"index": index, "text": piece, "logprobs": None, "finish_reason": reason}
            return f"data: {head}{json.dumps(choice)}]}}\n\n"

        async def events():
            # a client that goes away cancels this generator: closing `pieces` cancels its requests
            async with contextlib.aclosing(pieces):
                if chat:
                    for i in range(body.n):
                        yield chunk(i, "", None, first=True)
                try:
                    async for index, piece, reason in pieces:
                        yield chunk(index, piece, reason)
                except Exception as e:   # the stream has begun: the error goes in it, as OpenAI's does
                    message = e.message if isinstance(e, APIError) else str(e)
                    yield "data: " + json.dumps({"error": {"message": message, "type": "server_error"}}) + "\n\n"
                yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app
