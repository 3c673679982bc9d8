"""Request bodies for the three APIs, built once per task and encoded by msgspec.

Chat and legacy completions send `max_tokens` (the name every server accepts; `extra` can send
`max_completion_tokens`); Responses sends `max_output_tokens` and has no `stop` or `seed`
(DESIGN.md, "Requests"). `extra` is merged last, so a caller can reach any upstream option.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from ._config import Api, TaskRequest

__all__ = ["build_body", "endpoint_path"]

_encoder: Final = msgspec.json.Encoder()

_PATHS: Final = {
    "chat": "/chat/completions",
    "completions": "/completions",
    "responses": "/responses",
}


def endpoint_path(api: Api) -> str:
    return _PATHS[api]


def build_body(api: Api, model: str, req: TaskRequest, *, include_usage: bool) -> bytes:
    """The JSON body. Raises `ValueError` for what `api` cannot carry."""
    body: dict[str, Any] = {"model": model, "stream": True}
    messages = list(req.messages) if req.messages is not None else None
    if api == "completions":
        if messages is not None:
            raise ValueError("TaskRequest.messages: the completions api takes a prompt")
        body["prompt"] = req.prompt
    elif api == "chat":
        body["messages"] = (
            messages if messages is not None else [{"role": "user", "content": req.prompt}]
        )
    else:
        if req.stop is not None or req.seed is not None:
            raise ValueError("TaskRequest: the responses api has no stop or seed")
        body["input"] = (
            messages if messages is not None else [{"role": "user", "content": req.prompt}]
        )
    if req.max_tokens is not None:
        body["max_output_tokens" if api == "responses" else "max_tokens"] = req.max_tokens
    if req.temperature is not None:
        body["temperature"] = req.temperature
    if req.top_p is not None:
        body["top_p"] = req.top_p
    if req.stop is not None:
        body["stop"] = req.stop if isinstance(req.stop, str) else list(req.stop)
    if req.seed is not None:
        body["seed"] = req.seed
    if include_usage and api != "responses":
        body["stream_options"] = {"include_usage": True}
    if req.extra:
        body.update(req.extra)
    return _encoder.encode(body)
