"""What the test upstream answers, decided once for both wires: the sans-IO responder.

`Responder.answer(method, path, headers, body, at=...)` records the request and returns a
`Plan`: steps to play before the status line (a stall, raw bytes, a reset, a refused stream),
the status and headers, and the body as steps (`Stream` already expanded into the request's
normal stream). Everything a test scripts is decided here — the API key, the probes in each
engine's shape (`/v1/models`, `/health`, `/props`, `/slots`, `/version`, `/metrics`), "loading",
the reply queues (`script`, `script_for` by `X-Correlation-Id`, which go first), the faults, and
the three APIs' normal streams — so the HTTP/1.1 front-end (`FakeUpstream`, h11) and the HTTP/2
one (`H2Upstream`, h2) only play a plan on their wire and cannot drift apart. What a step means
on each wire is said where the step is defined (`_script.py`).

Invariants: a request is recorded exactly once, here (`requests`, in arrival order); a
completion request takes exactly one scripted reply, whatever it is answered (even a 401);
`streams_open` is the front-ends' count of completion plans being played (the "busy" slots
that `/slots` and vLLM's `/metrics` report).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from ._script import (
    RecordedRequest,
    Reply,
    ResetStream,
    ResponsesShape,
    Send,
    Sleep,
    Step,
    Stream,
    UpdateSettings,
    expand_steps,
    render_responses_stream,
    render_stream,
    split_words,
)

__all__ = ["COMPLETION_PATHS", "DEFAULT_TEXT", "Flavor", "Plan", "Responder"]

DEFAULT_TEXT = (
    "Trio makes structured concurrency feel natural: every task has a parent, every cancel "
    "has a scope, and nothing outlives the block that started it."
)

Flavor = Literal["llama.cpp", "vllm", "openai", "litellm"]

#: The paths that stream a completion; every other request is a probe.
COMPLETION_PATHS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/responses"})

#: The Responses stream each flavor sends (vLLM follows OpenAI's shape).
_RESPONSES_SHAPE: dict[str, ResponsesShape] = {
    "openai": "openai",
    "vllm": "openai",
    "llama.cpp": "llama.cpp",
    "litellm": "litellm",
}

_LOADING = {"error": {"message": "Loading model", "type": "unavailable_error", "code": 503}}
_NOT_FOUND = {"error": {"message": "File Not Found", "type": "not_found_error", "code": 404}}

_json = msgspec.json.Encoder()


@dataclass(frozen=True)
class Plan:
    """One answer, to be played on a wire: `before` (raw, before the status line), then the
    status line and `headers`, then `steps` (the body), then the end of the response.
    `completion`: the answer to a completion request (counted in `streams_open`)."""

    status: int
    headers: tuple[tuple[str, str], ...]
    steps: tuple[Step, ...] = ()
    before: tuple[Step, ...] = ()
    completion: bool = False


class Responder:
    """Decides every answer of the test upstream. See the module header."""

    #: The `Server` header (a web server's name, as uvicorn or nginx send).
    server_name = "fake-upstream"

    def __init__(
        self,
        *,
        text: str = DEFAULT_TEXT,
        tokens: Sequence[str] | None = None,
        model: str = "test-model",
        pace: float = 0.0,
        api_key: str | None = None,
        flavor: Flavor = "llama.cpp",
        slots: int = 4,
        n_ctx: int = 4096,
        missing: Sequence[str] = (),
    ) -> None:
        self.tokens: list[str] = list(tokens) if tokens is not None else split_words(text)
        self.model = model
        self.pace = pace
        self.api_key = api_key
        self.flavor: Flavor = flavor
        self.slots = slots
        self.n_ctx = n_ctx
        self.replies: deque[Reply] = deque()
        self.replies_for: dict[str, deque[Reply]] = {}  # by X-Correlation-Id
        self.requests: list[RecordedRequest] = []
        self.streams_open = 0
        self.probe_overrides: dict[str, tuple[int, Any]] = {}  # path -> (status, JSON body)
        self.missing = set(missing)  # probe paths answered with 404, e.g. {"/v1/models"}
        self.loading = False  # answer probes and completions with llama.cpp's 503 "Loading model"

    # --- what tests script ---------------------------------------------------------------

    def script(self, *replies: Reply) -> None:
        """Queue replies for the next completion requests, one each, in order."""
        self.replies.extend(replies)

    def script_for(self, correlation_id: str, *replies: Reply) -> None:
        """Queue replies for the completion requests that carry this `X-Correlation-Id`, so
        that concurrent tasks each meet their own faults. They go before `script()`'s queue."""
        self.replies_for.setdefault(correlation_id, deque()).extend(replies)

    def completion_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.method == "POST"]

    # --- the decision --------------------------------------------------------------------

    def answer(
        self, method: str, path: str, headers: dict[str, str], body: bytes, *, at: float
    ) -> Plan:
        """Record the request and decide its answer."""
        req = RecordedRequest.received(method, path, headers, body, at=at)
        self.requests.append(req)
        route = path.split("?", 1)[0]
        if method == "POST" and route in COMPLETION_PATHS:
            return self._completion(req, route)
        status, payload = self._probe(req, route)
        return self._plain(status, payload)

    def _next_reply(self, req: RecordedRequest) -> Reply:
        cid = req.headers.get("x-correlation-id", "")
        queue = self.replies_for.get(cid)
        if queue:
            reply = queue.popleft()
            if not queue:
                del self.replies_for[cid]
            return reply
        return self.replies.popleft() if self.replies else Reply()

    def _completion(self, req: RecordedRequest, route: str) -> Plan:
        reply = self._next_reply(req)
        before: list[Step] = [Sleep(reply.delay)] if reply.delay else []
        before += reply.before
        ok, token = self._authorized(req)
        if not ok:
            return self._plain(401, _unauthorized(token), before=before, completion=True)
        if self.loading:
            return self._plain(503, _LOADING, before=before, completion=True)
        if reply.steps is not None and not reply.steps and (reply.status >= 300 or reply.body):
            return self._plain(
                reply.status,
                reply.body,
                reply.headers,
                reply.content_type,
                before=before,
                completion=True,
            )
        steps = list(reply.steps) if reply.steps is not None else [Stream()]
        while steps and isinstance(steps[0], ResetStream | UpdateSettings):
            before.append(steps.pop(0))  # a refused stream, or new settings: before the headers
        headers = (
            ("content-type", reply.content_type or "text/event-stream"),
            ("cache-control", "no-cache"),
            ("x-request-id", f"req-{len(self.requests)}"),
            ("server", self.server_name),
            *reply.headers,
        )
        body = expand_steps(steps, self._normal_stream(req, route))
        return Plan(reply.status, headers, tuple(body), tuple(before), completion=True)

    def _plain(
        self,
        status: int,
        payload: Any,
        headers: Sequence[tuple[str, str]] = (),
        content_type: str | None = None,
        *,
        before: Sequence[Step] = (),
        completion: bool = False,
    ) -> Plan:
        raw = payload if isinstance(payload, bytes) else _json.encode(payload)
        if content_type is None:
            content_type = "application/json" if raw[:1] in (b"{", b"[") else "text/plain"
        hdrs = (
            ("content-type", content_type),
            ("content-length", str(len(raw))),
            ("server", self.server_name),
            *headers,
        )
        steps = (Send(raw),) if raw else ()
        return Plan(status, hdrs, steps, tuple(before), completion=completion)

    def _authorized(self, req: RecordedRequest) -> tuple[bool, str]:
        if self.api_key is None:
            return True, ""
        given = req.headers.get("authorization", "")
        token = given[7:] if given.lower().startswith("bearer ") else given
        return token == self.api_key, token

    def _probe(self, req: RecordedRequest, path: str) -> tuple[int, Any]:
        ok, token = self._authorized(req)
        if req.method != "GET" or path in self.missing:
            return 404, _NOT_FOUND
        if path in self.probe_overrides:
            return self.probe_overrides[path]
        if path == "/health":
            if self.flavor == "openai":
                return 404, _NOT_FOUND
            return (503, _LOADING) if self.loading else (200, {"status": "ok"})
        if self.loading:
            return 503, _LOADING
        if path in ("/v1/models", "/props", "/slots", "/version", "/metrics") and not ok:
            return 401, _unauthorized(token)
        if path == "/v1/models":
            entry: dict[str, Any] = {"id": self.model, "object": "model", "created": 1764000000}
            if self.flavor == "llama.cpp":
                entry |= {"owned_by": "llamacpp", "meta": {"n_ctx_train": self.n_ctx}}
            else:
                entry |= {"owned_by": self.flavor, "max_model_len": self.n_ctx}
            return 200, {"object": "list", "data": [entry]}
        if self.flavor == "llama.cpp":
            per_slot = self.n_ctx // self.slots
            if path == "/props":
                return 200, {
                    "default_generation_settings": {"n_ctx": per_slot, "model": self.model},
                    "total_slots": self.slots,
                    "model_path": f"/models/{self.model}.gguf",
                    "build_info": "b1-0c1e570",
                }
            if path == "/slots":
                busy = min(self.streams_open, self.slots)
                return 200, [
                    {"id": i, "is_processing": i < busy, "n_ctx": per_slot}
                    for i in range(self.slots)
                ]
        if self.flavor == "vllm":
            if path == "/version":
                return 200, {"version": "0.11.0"}
            if path == "/metrics":
                text = (
                    "# HELP vllm:num_requests_running Number of requests running.\n"
                    f'vllm:num_requests_running{{model_name="{self.model}"}} {self.streams_open}.0\n'
                    f'vllm:num_requests_waiting{{model_name="{self.model}"}} 0.0\n'
                )
                return 200, text.encode()
        return 404, _NOT_FOUND

    def _normal_stream(self, req: RecordedRequest, route: str) -> list[Step]:
        """The request's normal stream: the scripted text (cut at the request's token limit,
        then finishing `length`), in the API's shape and the flavor's."""
        body = req.json if isinstance(req.json, dict) else {}
        tokens = self.tokens
        finish: Literal["stop", "length"] = "stop"
        responses = route.endswith("/responses")
        if responses:
            limit = body.get("max_output_tokens")
        else:
            limit = body.get("max_tokens") or body.get("max_completion_tokens")
        if isinstance(limit, int) and 0 < limit < len(tokens):
            tokens, finish = tokens[:limit], "length"
        if responses:
            return render_responses_stream(
                tokens,
                shape=_RESPONSES_SHAPE[self.flavor],
                finish=finish,
                usage=(_prompt_tokens(body), len(tokens)),
                model=self.model,
                pace=self.pace,
            )
        usage = None
        options = body.get("stream_options") or {}
        if isinstance(options, dict) and options.get("include_usage"):
            usage = (_prompt_tokens(body), len(tokens))
        api: Literal["chat", "completions"] = (
            "chat" if route.endswith("chat/completions") else "completions"
        )
        return render_stream(
            api, tokens, finish=finish, usage=usage, model=self.model, pace=self.pace
        )


def _unauthorized(token: str) -> dict[str, Any]:
    # OpenAI echoes the key it was given; so do we, so tests can prove we redact it.
    return {
        "error": {
            "message": f"Incorrect API key provided: {token or '(none)'}.",
            "type": "invalid_request_error",
            "code": "invalid_api_key",
        }
    }


def _prompt_tokens(body: dict[str, Any]) -> int:
    if isinstance(body.get("prompt"), str):
        return len(split_words(body["prompt"]))
    count = 0
    for m in body.get("messages") or body.get("input") or []:
        if isinstance(m, dict) and isinstance(m.get("content"), str):
            count += len(split_words(m["content"]))
    if isinstance(body.get("input"), str):
        count = len(split_words(body["input"]))
    return count
