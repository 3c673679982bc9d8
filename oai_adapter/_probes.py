"""`health`, `props` and `engine_version`: best effort, bounded, never raising for a down upstream.

Each probe is an idempotent GET, retried on the retryable rows of the error table with the
adapter's `RetryPolicy`, and bounded by `connect + idle` per attempt and `total` overall. What
real servers answer is in FACTS.md, "Probes": llama.cpp's `/health` is open even when a key is
required, so a refused key is found on `/v1/models`; LiteLLM's `/health` runs a live call of
every model and is never used; the `Server` header names the web server, not the engine.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import httpx2
import msgspec
import trio

from ._errors import RETRYABLE, WorkerError, error_from_status, error_from_transport
from ._events import EngineVersion, HealthStatus, WorkerProps
from ._log import adapter_log
from ._retry import backoff_delay, retry_after_ms

if TYPE_CHECKING:
    from ._adapter import OpenAIAdapter

__all__ = ["probe_engine_version", "probe_health", "probe_props"]


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    body: bytes
    headers: httpx2.Headers

    def json(self) -> Any:
        try:
            return msgspec.json.decode(self.body)
        except msgspec.DecodeError:
            return None


async def _get(adapter: OpenAIAdapter, url: str) -> _Answer:
    """GET with retries. Raises `WorkerError` when no answer came (or a retryable status
    persisted); returns any other answer, whatever its status."""
    config = adapter.config
    policy = config.retry
    per_attempt = config.timeouts.connect + config.timeouts.idle
    attempt = 0
    with trio.fail_after(config.timeouts.total):
        while True:
            attempt += 1
            error: WorkerError
            try:
                with trio.fail_after(per_attempt):
                    response = await adapter.upstream.get(url)
            except WorkerError as exc:
                raise exc
            except trio.TooSlowError:
                error = error_from_transport(
                    httpx2.ReadTimeout("probe timed out"), after_headers=False
                )
            except (httpx2.HTTPError, OSError) as exc:
                error = error_from_transport(exc, after_headers=False, timeouts=config.timeouts)
            else:
                answer = _Answer(response.status_code, response.content, response.headers)
                if response.status_code < 400 or attempt >= policy.max_attempts:
                    return answer
                error = error_from_status(
                    answer.status, answer.body, retry_after_ms=retry_after_ms(answer.headers)
                )
                if error.kind not in RETRYABLE:
                    return answer
            if error.kind not in RETRYABLE or attempt >= policy.max_attempts:
                raise error
            delay = backoff_delay(policy, attempt, error.retry_after_ms, rng=adapter.rng)
            adapter_log(
                adapter,
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


async def _try_get(adapter: OpenAIAdapter, url: str) -> _Answer | WorkerError:
    try:
        return await _get(adapter, url)
    except WorkerError as exc:
        return exc
    except trio.TooSlowError:
        return error_from_transport(httpx2.ReadTimeout("probe timed out"), after_headers=False)


def _model_ids(payload: Any) -> list[str]:
    ids: list[str] = []
    if isinstance(payload, dict):
        for key in ("data", "models"):
            for entry in payload.get(key) or []:
                if isinstance(entry, dict):
                    for name in ("id", "model", "name"):
                        if isinstance(entry.get(name), str):
                            ids.append(entry[name])
                            break
    return ids


async def probe_health(adapter: OpenAIAdapter) -> HealthStatus:
    model = adapter.config.model
    up = adapter.upstream
    answer = await _try_get(adapter, up.url("/models"))
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
        ids = _model_ids(answer.json())
        if model in ids:
            return HealthStatus(live=True, ready=True, detail=f"model {model!r} is served")
        listed = ", ".join(ids[:5]) or "none"
        return HealthStatus(
            live=True, ready=False, detail=f"model {model!r} is not listed (listed: {listed})"
        )
    if answer.status in (404, 405):
        fallback = await _try_get(adapter, up.root_url("/health"))
        if isinstance(fallback, WorkerError):
            return HealthStatus(
                live=True, ready=False, detail=f"/models missing; /health: {fallback.message}"
            )
        if 200 <= fallback.status < 300:
            return HealthStatus(live=True, ready=True, detail="/models missing; /health ok")
        message = error_from_status(fallback.status, fallback.body).message
        return HealthStatus(
            live=True,
            ready=False,
            detail=f"/models missing; /health: HTTP {fallback.status} {message}",
        )
    message = error_from_status(answer.status, answer.body).message
    return HealthStatus(live=True, ready=False, detail=f"/models: HTTP {answer.status} {message}")


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


_METRIC: Final = re.compile(
    r"^(vllm:num_requests_running|vllm:num_requests_waiting)\{[^}]*\}\s+([0-9.eE+-]+)$", re.M
)


async def probe_props(adapter: OpenAIAdapter) -> WorkerProps:
    up = adapter.upstream
    slots_total = slots_free = context_length = None
    model: str | None = None
    props = await _try_get(adapter, up.root_url("/props"))
    if isinstance(props, _Answer) and props.status == 200 and isinstance(p := props.json(), dict):
        slots_total = _int(p.get("total_slots"))
        settings = p.get("default_generation_settings")
        if isinstance(settings, dict):
            context_length = _int(settings.get("n_ctx"))
            if isinstance(settings.get("model"), str):
                model = settings["model"]
        if model is None and isinstance(p.get("model_alias"), str):
            model = p["model_alias"]
        slots = await _try_get(adapter, up.root_url("/slots"))
        if (
            isinstance(slots, _Answer)
            and slots.status == 200
            and isinstance(s := slots.json(), list)
        ):
            entries = [e for e in s if isinstance(e, dict)]
            slots_free = sum(1 for e in entries if not e.get("is_processing"))
            slots_total = slots_total or len(entries)
            if context_length is None and entries:
                context_length = _int(entries[0].get("n_ctx"))
    else:
        metrics = await _try_get(adapter, up.root_url("/metrics"))
        if isinstance(metrics, _Answer) and metrics.status == 200:
            values = {
                m[0]: float(m[1]) for m in _METRIC.findall(metrics.body.decode("utf-8", "replace"))
            }
            if "vllm:num_requests_running" in values:
                adapter_log(adapter, probe="/metrics").debug(f"vLLM metrics: {values}")
    if model is None or context_length is None:
        models = await _try_get(adapter, up.url("/models"))
        if (
            isinstance(models, _Answer)
            and models.status == 200
            and isinstance(m := models.json(), dict)
        ):
            for entry in m.get("data") or []:
                if isinstance(entry, dict) and entry.get("id") == adapter.config.model:
                    model = model or entry["id"]
                    if context_length is None:
                        context_length = _int(entry.get("max_model_len"))
    return WorkerProps(
        slots_total=slots_total, slots_free=slots_free, model=model, context_length=context_length
    )


async def probe_engine_version(adapter: OpenAIAdapter) -> EngineVersion:
    up = adapter.upstream
    config = adapter.config
    server: str | None = None
    digest: str | None = None

    def note(answer: _Answer) -> None:
        nonlocal server
        server = server or answer.headers.get("server")

    candidates: list[tuple[str, str]] = [
        ("/version", "vllm"),
        ("/props", "llama.cpp"),
        ("/info", "tgi"),
        ("/api/version", "ollama"),
    ]
    for path, engine in candidates:
        answer = await _try_get(adapter, up.root_url(path))
        if isinstance(answer, WorkerError):
            if answer.kind.value in ("POOL_UNAVAILABLE", "POLICY"):
                break  # down: no point asking the next path
            continue
        note(answer)
        if litellm := answer.headers.get("x-litellm-version"):
            return EngineVersion(
                engine="litellm", version=litellm, model_digest=config.model_digest, server=server
            )
        if answer.status != 200 or not isinstance(body := answer.json(), dict):
            continue
        version: Any = None
        if engine == "llama.cpp":
            version = body.get("build_info")
        elif engine == "tgi":
            version = body.get("version")
            digest = body.get("model_sha") if isinstance(body.get("model_sha"), str) else None
        else:
            version = body.get("version")
        if isinstance(version, str) and version:
            return EngineVersion(
                engine=engine,
                version=version,
                model_digest=digest or config.model_digest,
                server=server,
            )
    cached = adapter.litellm_version
    if cached:
        return EngineVersion(
            engine="litellm", version=cached, model_digest=config.model_digest, server=server
        )
    return EngineVersion(
        engine="unknown", version="unknown", model_digest=config.model_digest, server=server
    )
