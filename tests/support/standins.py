"""Local HTTP stand-ins for the providers the reference pipelines call; no real provider is reached.

`llm_server()` is an OpenAI-compatible `POST /v1/chat/completions` that answers the language
pipeline's translation and example sentences as JSON; `images_server()` an OpenAI-compatible
`POST /v1/images/generations` that answers `b64_json` PNGs. Both run on 127.0.0.1 in a thread,
record what they were asked, and can be told to misbehave (429, slow, 500). Each yields its state;
`.env` holds the PGMQ_WORKER_* settings that point a worker at it.
"""

from __future__ import annotations

import base64
import json
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TRANSLATION = (
    "On Saturday we take the train to Hamburg. My sister has lived there for two years in a small flat "
    "by the harbour."
)


class JsonAnswers(BaseHTTPRequestHandler):
    """Shared plumbing: read a JSON body, answer JSON, stay quiet, shrug off a vanished client."""

    def body(self) -> dict[str, Any]:
        return dict(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))

    def answer(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        try:
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # a killed worker's request
            pass

    def log_message(self, *_args: Any) -> None:
        pass


@contextmanager
def serving(handler: type[BaseHTTPRequestHandler], state: Any) -> Iterator[str]:
    """Serve `handler` on a free 127.0.0.1 port with `state` on the server; yields the base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    server.state = state  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


# -- the LLM ------------------------------------------------------------------------------------------


@dataclass
class LlmStandIn:
    """What the stand-in LLM saw and how it should answer."""

    url: str = ""
    requests: list[dict[str, Any]] = field(default_factory=list)  # {task, at, body, authorization}
    rate_limit: int = 0  # answer this many requests with 429 Retry-After: 1 first
    hold_sentences: threading.Event | None = None  # when set: sentence requests wait for it
    sentences_asked: threading.Event = field(default_factory=threading.Event)

    def count(self, task: str) -> int:
        """Requests for `translate` or `sentences` so far (429s included)."""
        return sum(1 for r in self.requests if r["task"] == task)

    @property
    def env(self) -> dict[str, str]:
        return {
            "PGMQ_WORKER_LLM_BASE_URL": self.url,
            "PGMQ_WORKER_LLM_MODEL": "stand-in-1",
            "PGMQ_WORKER_LLM_API_KEY": "test-key",
        }


class ChatCompletions(JsonAnswers):
    """POST /v1/chat/completions: the translation, or one example sentence per word asked."""

    def do_POST(self) -> None:
        state: LlmStandIn = self.server.state  # type: ignore[attr-defined]
        body = self.body()
        system, user = body["messages"][0]["content"], body["messages"][1]["content"]
        task = "translate" if "You translate" in system else "sentences"
        auth = self.headers["authorization"]
        state.requests.append({"task": task, "at": time.monotonic(), "body": body, "authorization": auth})
        if self.path != "/v1/chat/completions":
            self.answer(404, {"error": "no such path"})
            return
        if len(state.requests) <= state.rate_limit:
            self.answer(429, {"error": {"message": "slow down"}}, {"Retry-After": "1"})
            return
        if task == "translate":
            answer: dict[str, Any] = {"translation": TRANSLATION}
        else:
            state.sentences_asked.set()
            if state.hold_sentences is not None:
                state.hold_sentences.wait(30)
            words = json.loads(user)["words"]
            answer = {
                "sentences": [
                    {"lemma": w, "sentence": f"Das Wort {w} ist neu.", "translation": f"The word {w} is new."}
                    for w in words
                ]
            }
        choice = {"index": 0, "message": {"role": "assistant", "content": json.dumps(answer)}}
        self.answer(200, {"object": "chat.completion", "choices": [{**choice, "finish_reason": "stop"}]})


@contextmanager
def llm_server() -> Iterator[LlmStandIn]:
    """The stand-in LLM, running until the block ends."""
    state = LlmStandIn()
    with serving(ChatCompletions, state) as url:
        state.url = url
        try:
            yield state
        finally:
            if state.hold_sentences is not None:
                state.hold_sentences.set()


# -- the images API -----------------------------------------------------------------------------------


def tiny_png(rgb: tuple[int, int, int]) -> bytes:
    """A real 1x1 PNG of one colour."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00" + bytes(rgb))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


@dataclass
class ImagesStandIn:
    """What the stand-in images API saw; prompts containing `slow`, `broken`, `busy` or `pause`
    misbehave."""

    url: str = ""
    requests: list[dict[str, Any]] = field(default_factory=list)
    busy_once: bool = True  # the first `busy` prompt gets 429 Retry-After: 0
    hold: threading.Event | None = None  # when set: `pause` prompts wait for it
    held: threading.Event = field(default_factory=threading.Event)  # a `pause` prompt arrived

    def asked(self, prompt: str) -> int:
        """Requests for `prompt` so far."""
        return sum(1 for r in self.requests if r["prompt"] == prompt)

    @property
    def env(self) -> dict[str, str]:
        return {
            "PGMQ_WORKER_IMAGE_BASE_URL": self.url,
            "PGMQ_WORKER_IMAGE_API_KEY": "test-key",
            "PGMQ_WORKER_IMAGE_MODEL": "stand-in",
        }


class ImageGenerations(JsonAnswers):
    """POST /v1/images/generations: a 1x1 PNG whose colour depends on the prompt."""

    def do_POST(self) -> None:
        state: ImagesStandIn = self.server.state  # type: ignore[attr-defined]
        body = self.body()
        state.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), **body})
        prompt = body["prompt"]
        if "slow" in prompt:
            time.sleep(4)  # past every per-image timeout the tests set (at most 2.5 s)
        if "pause" in prompt and state.hold is not None:
            state.held.set()
            state.hold.wait(30)
        if "broken" in prompt:
            self.answer(500, {"error": {"message": "model overloaded"}})
            return
        if "busy" in prompt and state.busy_once:
            state.busy_once = False
            self.answer(429, {"error": {"message": "slow down"}}, {"Retry-After": "0"})
            return
        image = base64.b64encode(tiny_png((len(prompt) % 256, 80, 160))).decode()
        self.answer(200, {"created": 0, "data": [{"b64_json": image}]})


@contextmanager
def images_server() -> Iterator[ImagesStandIn]:
    """The stand-in images API, running until the block ends."""
    state = ImagesStandIn()
    with serving(ImageGenerations, state) as url:
        state.url = url
        try:
            yield state
        finally:
            if state.hold is not None:
                state.hold.set()
