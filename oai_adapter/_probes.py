"""`health`, `props` and `engine_version`: best effort, bounded, never raising for a down upstream.

Each probe is an idempotent GET, retried on the retryable rows of the error table with the
adapter's `RetryPolicy`, and bounded by `connect + idle` per attempt and `total` overall. What
real servers answer is in FACTS.md, "Probes": llama.cpp's `/health` is open even when a key is
required, so a refused key is found on `/v1/models`; LiteLLM's `/health` runs a live call of
every model and is never used; the `Server` header names the web server, not the engine.

Bodies are read through `Upstream.get` (the same bounded reading as every response, at most
`MAX_PROBE_BYTES`) and decoded with view Structs naming only the fields read; a body that does
not decode — wrong shape, wrong types, invalid JSON, or JSON nested so deep that msgspec raises
`RecursionError` — counts as "not reported", never as an exception (a hostile upstream cannot make
a probe raise). A list whose entries vary (`/models`, `/slots`) is decoded entry by entry, so one
odd entry costs only itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import httpx2
import msgspec
import trio

from ._endpoint import Endpoint
from ._errors import RETRYABLE, WorkerError, error_from_status, error_from_transport
from ._events import EngineVersion, HealthStatus, WorkerProps
from ._log import adapter_log
from ._retry import backoff_delay, retry_after_ms

__all__ = ["probe_engine_version", "probe_health", "probe_props"]

_T = TypeVar("_T")


# --- view Structs: only the fields read, every field defaulted, unknown fields skipped ----------


class _ModelEntry(msgspec.Struct):
    id: str | None = None
    model: str | None = None
    name: str | None = None
    max_model_len: int | None = None

    def ident(self) -> str | None:
        return self.id or self.model or self.name


class _ModelList(msgspec.Struct):
    data: list[msgspec.Raw] | None = None
    models: list[msgspec.Raw] | None = None


class _Settings(msgspec.Struct):
    n_ctx: int | None = None
    model: str | None = None


class _Props(msgspec.Struct):
    total_slots: int | None = None
    default_generation_settings: _Settings | None = None
    model_alias: str | None = None


class _Slot(msgspec.Struct):
    is_processing: Any = None
    n_ctx: int | None = None


class _Version(msgspec.Struct):
    version: str | None = None
    build_info: str | None = None
    model_sha: str | None = None


_MODEL_LIST: Final = msgspec.json.Decoder(_ModelList)
_MODEL_ENTRY: Final = msgspec.json.Decoder(_ModelEntry)
_PROPS: Final = msgspec.json.Decoder(_Props)
_SLOTS: Final = msgspec.json.Decoder(list[msgspec.Raw])
_SLOT: Final = msgspec.json.Decoder(_Slot)
_VERSION: Final = msgspec.json.Decoder(_Version)


def _decode(decoder: msgspec.json.Decoder[_T], body: bytes | msgspec.Raw) -> _T | None:
    """`decoder.decode(body)`, or None when it does not decode (see the module header)."""
    try:
        return decoder.decode(body)
    except (msgspec.DecodeError, RecursionError):
        return None


def _entries(decoder: msgspec.json.Decoder[_T], raws: list[msgspec.Raw] | None) -> list[_T]:
    return [e for raw in raws or () if (e := _decode(decoder, raw)) is not None]


def _status_error(status: int, body: bytes, headers: httpx2.Headers | None = None) -> WorkerError:
    after = retry_after_ms(headers) if headers is not None else None
    try:
        return error_from_status(status, body, retry_after_ms=after)
    except RecursionError:  # a hostile error body: the status still speaks
        return error_from_status(status, b"", retry_after_ms=after)


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    body: bytes
    headers: httpx2.Headers


def _decoded(decoder: msgspec.json.Decoder[_T], answer: _Answer | WorkerError) -> _T | None:
    """A 200 answer's body decoded, else None."""
    if isinstance(answer, _Answer) and answer.status == 200:
        return _decode(decoder, answer.body)
    return None


async def _get(endpoint: Endpoint, url: str) -> _Answer:
    """GET with retries. Raises `WorkerError` when no answer came (or a retryable status
    persisted); returns any other answer, whatever its status."""
    config = endpoint.config
    policy = config.retry
    per_attempt = config.timeouts.connect + config.timeouts.idle
    attempt = 0
    with trio.fail_after(config.timeouts.total):
        while True:
            attempt += 1
            error: WorkerError
            try:
                with trio.fail_after(per_attempt):
                    status, headers, body = await endpoint.upstream.get(url)
            except WorkerError as exc:
                raise exc
            except trio.TooSlowError:
                error = error_from_transport(
                    httpx2.ReadTimeout("probe timed out"), after_headers=False
                )
            except (httpx2.HTTPError, OSError) as exc:
                error = error_from_transport(exc, after_headers=False, timeouts=config.timeouts)
            else:
                answer = _Answer(status, body, headers)
                if status < 400 or attempt >= policy.max_attempts:
                    return answer
                error = _status_error(status, body, headers)
                if error.kind not in RETRYABLE:
                    return answer
            if error.kind not in RETRYABLE or attempt >= policy.max_attempts:
                raise error
            delay = backoff_delay(policy, attempt, error.retry_after_ms, rng=endpoint.rng)
            adapter_log(
                endpoint.log_fields(),
                probe=httpx2.URL(url).path,
                attempt=attempt,
                error_kind=error.kind.value,
                status=error.status,
                retryable=error.retryable,
                retry_after_ms=error.retry_after_ms,
            ).warning(
                f"probe {url} attempt {attempt} failed ({error.kind.value}: {error.message}), "
                f"retrying in {delay * 1000:.0f} ms"
            )
            await trio.sleep(delay)


async def _try_get(endpoint: Endpoint, url: str) -> _Answer | WorkerError:
    try:
        return await _get(endpoint, url)
    except WorkerError as exc:
        return exc
    except trio.TooSlowError:
        return error_from_transport(httpx2.ReadTimeout("probe timed out"), after_headers=False)


def _model_entries(body: bytes) -> list[_ModelEntry]:
    listing = _decode(_MODEL_LIST, body)
    if listing is None:
        return []
    return _entries(_MODEL_ENTRY, listing.data) + _entries(_MODEL_ENTRY, listing.models)


def _model_ids(body: bytes) -> list[str]:
    """The listed ids, each once, in order (a dict: a hostile 1 MiB list of repeats stays
    linear, where `not in list` was quadratic)."""
    return list(dict.fromkeys(i for entry in _model_entries(body) if (i := entry.ident())))


async def probe_health(endpoint: Endpoint) -> HealthStatus:
    model = endpoint.config.model
    up = endpoint.upstream
    answer = await _try_get(endpoint, up.url("/models"))
    if isinstance(answer, WorkerError):
        return HealthStatus(
            live=False, ready=False, detail=f"{answer.kind.value}: {answer.message}"
        )
    if answer.status in (401, 403):
        return HealthStatus(
            live=True,
            ready=False,
            detail=f"the upstream refused the API key (HTTP {answer.status})",
        )
    if answer.status == 200:
        ids = _model_ids(answer.body)
        if model in ids:
            return HealthStatus(live=True, ready=True, detail=f"model {model!r} is served")
        listed = ", ".join(ids[:5]) or "none"
        return HealthStatus(
            live=True, ready=False, detail=f"model {model!r} is not listed (listed: {listed})"
        )
    if answer.status in (404, 405):
        fallback = await _try_get(endpoint, up.root_url("/health"))
        if isinstance(fallback, WorkerError):
            return HealthStatus(
                live=True, ready=False, detail=f"/models missing; /health: {fallback.message}"
            )
        if 200 <= fallback.status < 300:
            return HealthStatus(live=True, ready=True, detail="/models missing; /health ok")
        message = _status_error(fallback.status, fallback.body).message
        return HealthStatus(
            live=True,
            ready=False,
            detail=f"/models missing; /health: HTTP {fallback.status} {message}",
        )
    message = _status_error(answer.status, answer.body).message
    return HealthStatus(live=True, ready=False, detail=f"/models: HTTP {answer.status} {message}")


_METRIC: Final = re.compile(
    r"^(vllm:num_requests_running|vllm:num_requests_waiting)\{[^}]*\}\s+([0-9.eE+-]+)$", re.M
)


async def probe_props(endpoint: Endpoint) -> WorkerProps:
    up = endpoint.upstream
    slots_total = slots_free = context_length = None
    model: str | None = None
    answer = await _try_get(endpoint, up.root_url("/props"))
    props = _decoded(_PROPS, answer)
    if props is not None:
        slots_total = props.total_slots
        settings = props.default_generation_settings
        if settings is not None:
            context_length = settings.n_ctx
            model = settings.model
        model = model or props.model_alias
        slots = await _try_get(endpoint, up.root_url("/slots"))
        raws = _decoded(_SLOTS, slots)
        if raws is not None:
            entries = _entries(_SLOT, raws)
            slots_free = sum(1 for e in entries if not e.is_processing)
            slots_total = slots_total or len(entries)
            if context_length is None and entries:
                context_length = entries[0].n_ctx
    else:
        metrics = await _try_get(endpoint, up.root_url("/metrics"))
        if isinstance(metrics, _Answer) and metrics.status == 200:
            values = {
                m[0]: float(m[1]) for m in _METRIC.findall(metrics.body.decode("utf-8", "replace"))
            }
            if "vllm:num_requests_running" in values:
                adapter_log(endpoint.log_fields(), probe="/metrics").debug(
                    f"vLLM metrics: {values}"
                )
    if model is None or context_length is None:
        models = await _try_get(endpoint, up.url("/models"))
        listing = _decoded(_MODEL_LIST, models)
        if listing is not None:
            for entry in _entries(_MODEL_ENTRY, listing.data):
                if entry.id == endpoint.config.model:
                    model = model or entry.id
                    if context_length is None:
                        context_length = entry.max_model_len
    return WorkerProps(
        slots_total=slots_total, slots_free=slots_free, model=model, context_length=context_length
    )


async def probe_engine_version(endpoint: Endpoint) -> EngineVersion:
    """Ask each engine's version path in turn; a version found is also kept in
    `endpoint.info.engine_version` (the `engine_version` field of every later log record)."""
    version = await _engine_version(endpoint)
    if version.version != "unknown":
        endpoint.info.engine_version = f"{version.engine} {version.version}"
    return version


async def _engine_version(endpoint: Endpoint) -> EngineVersion:
    up = endpoint.upstream
    config = endpoint.config
    server: str | None = None

    candidates: list[tuple[str, str]] = [
        ("/version", "vllm"),
        ("/props", "llama.cpp"),
        ("/info", "tgi"),
        ("/api/version", "ollama"),
    ]
    for path, engine in candidates:
        answer = await _try_get(endpoint, up.root_url(path))
        if isinstance(answer, WorkerError):
            if answer.kind.value in ("POOL_UNAVAILABLE", "POLICY"):
                break  # down: no point asking the next path
            continue
        server = server or answer.headers.get("server")
        if litellm := answer.headers.get("x-litellm-version"):
            return EngineVersion(
                engine="litellm", version=litellm, model_digest=config.model_digest, server=server
            )
        if answer.status != 200 or (body := _decode(_VERSION, answer.body)) is None:
            continue
        version = body.build_info if engine == "llama.cpp" else body.version
        digest = body.model_sha if engine == "tgi" else None
        if version:
            return EngineVersion(
                engine=engine,
                version=version,
                model_digest=digest or config.model_digest,
                server=server,
            )
    cached = endpoint.info.litellm_version
    if cached:
        return EngineVersion(
            engine="litellm", version=cached, model_digest=config.model_digest, server=server
        )
    return EngineVersion(
        engine="unknown", version="unknown", model_digest=config.model_digest, server=server
    )
