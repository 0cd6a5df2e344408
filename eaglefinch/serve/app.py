"""The OpenAI-compatible HTTP API over the scheduler: /v1/models, /v1/completions, /v1/chat/completions
(streamed as server-sent events, or not), /health and /metrics.

    app = create_app(model, tokenizer, model_name="finch")   # then: uvicorn.run(app)

Each request becomes `n` scheduler requests; their tokens come back on the scheduler's thread and are
handed to the request's asyncio queue. Text, stop strings and the chat template live here; the
scheduler knows token ids only. Bad requests get an OpenAI-style error body and a 4xx.
"""
import asyncio
import contextlib
import json
import time
import uuid
from typing import Literal

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from eaglefinch.rwkv_core.sampling import SEED_LIMIT, SamplerConfig, random_seed
from eaglefinch.rwkv_core.scheduler import Scheduler
from eaglefinch.text.generate import TextStream

from .chat_template import ChatTemplate


class APIError(Exception):
    def __init__(self, status, message, param=None, kind="invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind


class SamplingFields(BaseModel):
    """The fields both endpoints take (OpenAI's names; top_k is our extension)."""
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0)
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=0, le=SEED_LIMIT)
    n: int = Field(default=1, ge=1, le=16)
    stream: bool = False
    user: str | None = None

    def sampler(self, banned=()) -> SamplerConfig:
        try:
            return SamplerConfig(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                                 presence_penalty=self.presence_penalty, frequency_penalty=self.frequency_penalty,
                                 banned_tokens=tuple(banned))
        except ValueError as e:
            raise APIError(400, str(e)) from None

    def stops(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > 4:
            raise APIError(400, "stop takes at most 4 strings", "stop")
        return stops


class CompletionBody(SamplingFields):
    prompt: str


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatBody(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)


class Server:
    """What the endpoints share: the scheduler, the tokenizer, limits and counters."""

    def __init__(self, model, tokenizer, model_name, max_batch, max_prompt_tokens, default_max_tokens,
                 template, engine_args):
        self.scheduler = Scheduler(model, max_batch=max_batch, **engine_args)
        self.tokenizer, self.model_name = tokenizer, model_name
        self.vocab_size = model.cfg.vocab_size
        self.max_prompt_tokens, self.default_max_tokens = max_prompt_tokens, default_max_tokens
        self.template = template
        self.banned = tuple(range(tokenizer.id_limit, self.vocab_size))  # head rows that are not tokens
        self.prompt_tokens_read = 0
        self.created = int(time.time())

    def encode(self, text: str, param: str) -> list[int]:
        ids = self.tokenizer.encode(text)
        if not ids:
            raise APIError(400, f"{param} is empty: give at least one character", param)
        if len(ids) > self.max_prompt_tokens:
            raise APIError(400, f"{param} has {len(ids)} tokens; this server takes at most "
                                f"{self.max_prompt_tokens} (--max-prompt-tokens)", param)
        return ids

    async def run(self, ids, body: SamplingFields, sampler, stops, on_piece):
        """Generate `body.n` continuations of `ids`; `on_piece(index, text, finish_reason)` is awaited
        for every piece of text and once at each end. Returns the completion tokens of all of them.
        A client that goes away (the task is cancelled) cancels its requests."""
        loop = asyncio.get_running_loop()
        events = asyncio.Queue()
        seed = body.seed if body.seed is not None else random_seed()
        requests = []
        for index in range(body.n):
            def on_token(token, reason, index=index):
                loop.call_soon_threadsafe(events.put_nowait, (index, token, reason))
            requests.append(self.scheduler.submit(ids, body.max_tokens or self.default_max_tokens, sampler,
                                                  (seed + index) % (SEED_LIMIT + 1), on_token))
        self.prompt_tokens_read += len(ids) * body.n
        streams = [TextStream(self.tokenizer, stops) for _ in range(body.n)]
        done = [False] * body.n
        tokens = 0
        try:
            while not all(done):
                index, token, reason = await events.get()
                stream = streams[index]
                if done[index]:
                    continue
                if reason is None:
                    tokens += 1
                    piece = stream.feed(token)
                    if stream.stopped:   # a stop string: this sequence ends here
                        requests[index].cancel()
                        reason = "stop"
                    if piece:
                        await on_piece(index, piece, None)
                    if reason is None:
                        continue
                if reason == "error":
                    raise APIError(500, "the model failed while generating", kind="server_error")
                done[index] = True
                piece = stream.finish()
                if piece:
                    await on_piece(index, piece, None)
                await on_piece(index, "", "stop" if reason in ("stop", "cancelled") else reason)
        finally:
            for request in requests:
                request.cancel()
        return tokens


def _error_body(status, message, param=None, kind="invalid_request_error"):
    return JSONResponse(status_code=status, content={"error": {"message": message, "type": kind,
                                                               "param": param, "code": None}})


def create_app(model, tokenizer, *, model_name="eaglefinch", max_batch=16, max_prompt_tokens=8192,
               default_max_tokens=256, template=None, engine_args=None) -> FastAPI:
    """The FastAPI app serving `model` (an RWKV in eval mode) with `tokenizer` (WorldTokenizer or a
    run's SubsetTokenizer). `template`: the chat format (default: RWKV World)."""
    server = Server(model, tokenizer, model_name, max_batch, max_prompt_tokens, default_max_tokens,
                    template or ChatTemplate(), engine_args or {})
    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        server.scheduler.close(timeout=10)   # on shutdown (SIGTERM): in-flight requests end "cancelled"

    app = FastAPI(title="eaglefinch", description="Eagle and Finch models behind the OpenAI API", lifespan=lifespan)
    app.state.server = server

    @app.exception_handler(APIError)
    async def api_error(_request, e: APIError):
        return _error_body(e.status, e.message, e.param, e.kind)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request, e: RequestValidationError):
        first = e.errors()[0] if e.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        return _error_body(400, f"{where or 'body'}: {first.get('msg', 'invalid request')}", where)

    @app.get("/health")
    async def health():
        if server.scheduler.error is not None:
            return _error_body(503, f"the scheduler stopped: {server.scheduler.error}", kind="server_error")
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": server.model_name, "object": "model",
                                            "created": server.created, "owned_by": "eaglefinch"}]}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics():
        s = server.scheduler
        lines = [
            ("eaglefinch_queue_length", "gauge", "requests waiting for a slot", s.queue_length),
            ("eaglefinch_active_sequences", "gauge", "sequences in the running batch", len(s.active)),
            ("eaglefinch_generated_tokens_total", "counter", "tokens generated", s.tokens_generated),
            ("eaglefinch_prompt_tokens_total", "counter", "prompt tokens read", server.prompt_tokens_read),
        ]
        return "".join(f"# HELP {name} {text}\n# TYPE {name} {kind}\n{name} {value}\n"
                       for name, kind, text, value in lines)

    @app.post("/v1/completions")
    async def completions(body: CompletionBody):
        ids = server.encode(body.prompt, "prompt")
        return await respond(body, ids, body.sampler(server.banned), body.stops(), chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatBody):
        prompt = server.template.render([m.model_dump() for m in body.messages])
        ids = server.encode(prompt, "messages")
        return await respond(body, ids, body.sampler(server.banned), server.template.stop + body.stops(), chat=True)

    async def respond(body, ids, sampler, stops, chat):
        created, rid = int(time.time()), ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        kind = "chat.completion" if chat else "text_completion"

        def usage(completion_tokens):
            return {"prompt_tokens": len(ids) * body.n, "completion_tokens": completion_tokens,
                    "total_tokens": len(ids) * body.n + completion_tokens}

        if not body.stream:
            texts, reasons = [""] * body.n, [None] * body.n

            async def collect(index, piece, reason):
                texts[index] += piece
                reasons[index] = reason or reasons[index]
            tokens = await server.run(ids, body, sampler, stops, collect)
            if chat:
                choices = [{"index": i, "message": {"role": "assistant", "content": texts[i].strip()},
                            "finish_reason": reasons[i]} for i in range(body.n)]
            else:
                choices = [{"index": i, "text": texts[i], "logprobs": None, "finish_reason": reasons[i]}
                           for i in range(body.n)]
            return {"id": rid, "object": kind, "created": created, "model": server.model_name,
                    "choices": choices, "usage": usage(tokens)}

        chunk_kind = "chat.completion.chunk" if chat else "text_completion"

        def chunk(index, piece, reason, first=False):
            if chat:
                delta = {"role": "assistant", "content": ""} if first else ({"content": piece} if piece else {})
                choice = {"index": index, "delta": delta, "finish_reason": reason}
            else:
                choice = {"index": index, "text": piece, "logprobs": None, "finish_reason": reason}
            return "data: " + json.dumps({"id": rid, "object": chunk_kind, "created": created,
                                          "model": server.model_name, "choices": [choice]}) + "\n\n"

        async def events():
            out = asyncio.Queue()   # SSE events, then None

            async def push(index, piece, reason):
                await out.put(chunk(index, piece, reason))

            async def produce():
                try:
                    await server.run(ids, body, sampler, stops, push)
                except Exception as e:   # the stream has begun: the error goes in it, as OpenAI's does
                    message = e.message if isinstance(e, APIError) else str(e)
                    await out.put("data: " + json.dumps({"error": {"message": message, "type": "server_error"}}) + "\n\n")
                finally:
                    out.put_nowait(None)
            task = asyncio.create_task(produce())
            try:
                if chat:
                    for i in range(body.n):
                        yield chunk(i, "", None, first=True)
                while (event := await out.get()) is not None:
                    yield event
                yield "data: [DONE]\n\n"
            finally:
                task.cancel()   # the client went away: its requests leave the batch

        return StreamingResponse(events(), media_type="text/event-stream")

    return app
