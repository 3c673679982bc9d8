"""`health`, `props`, `engine_version` against the embedded upstream, in each engine's shape,
and against a down one: best effort, never raising."""

from __future__ import annotations

import msgspec
import pytest
import trio
from trio.testing import MockClock

from oai_adapter import EngineVersion, HealthStatus, OpenAIAdapter, WorkerProps
from oai_adapter.testing import FakeUpstream

from .conftest import IO_DEADLINE, make_config
from .hostile import HostileUpstream, json_response


async def start(nursery: trio.Nursery, **kwargs: object) -> FakeUpstream:
    server = FakeUpstream(**kwargs)  # type: ignore[arg-type]
    await nursery.start(server.serve)
    return server


async def dead_port() -> int:
    sock = trio.socket.socket()
    await sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    sock.close()
    return port


@pytest.mark.req("OC-ADAPT-OAI-6000", "OC-ADAPT-OAI-6010")
async def test_llama_cpp_shapes(nursery: trio.Nursery) -> None:
    up = await start(nursery, flavor="llama.cpp", slots=4, n_ctx=4096)
    async with OpenAIAdapter(make_config(up)) as adapter:
        with trio.fail_after(IO_DEADLINE):
            health = await adapter.health()
            props = await adapter.props()
            version = await adapter.engine_version()
    assert health == HealthStatus(live=True, ready=True, detail="model 'test-model' is served")
    # n_ctx is per slot: -c 4096 -np 4 → 1024 (FACTS.md).
    assert props == WorkerProps(
        slots_total=4, slots_free=4, model="test-model", context_length=1024
    )
    assert version == EngineVersion(
        engine="llama.cpp", version="b1-0c1e570", model_digest=None, server="fake-upstream"
    )


@pytest.mark.req("OC-ADAPT-OAI-6000", "OC-ADAPT-OAI-6010")
async def test_vllm_shapes(nursery: trio.Nursery) -> None:
    up = await start(nursery, flavor="vllm", n_ctx=8192)
    async with OpenAIAdapter(make_config(up, model_digest="sha256:abc")) as adapter:
        with trio.fail_after(IO_DEADLINE):
            health = await adapter.health()
            props = await adapter.props()
            version = await adapter.engine_version()
    assert health.ready
    assert props == WorkerProps(
        slots_total=None, slots_free=None, model="test-model", context_length=8192
    )
    assert version == EngineVersion(
        engine="vllm", version="0.11.0", model_digest="sha256:abc", server="fake-upstream"
    )


@pytest.mark.req("OC-ADAPT-OAI-6010")
async def test_openai_like_upstream_without_engine_probes(nursery: trio.Nursery) -> None:
    up = await start(nursery, flavor="openai")
    async with OpenAIAdapter(make_config(up)) as adapter:
        with trio.fail_after(IO_DEADLINE):
            health = await adapter.health()
            props = await adapter.props()
            version = await adapter.engine_version()
    assert health.ready
    assert props.slots_total is None
    assert props.model == "test-model"
    assert version.engine == "unknown"
    assert version.version == "unknown"
    assert version.server == "fake-upstream"


async def test_unlisted_model_is_live_but_not_ready(nursery: trio.Nursery) -> None:
    up = await start(nursery)
    async with OpenAIAdapter(make_config(up, model="other-model")) as adapter:
        with trio.fail_after(IO_DEADLINE):
            health = await adapter.health()
    assert health.live
    assert not health.ready
    assert "other-model" in health.detail


@pytest.mark.req("OC-ADAPT-OAI-6000")
async def test_refused_key_is_live_not_ready_without_fallback(nursery: trio.Nursery) -> None:
    up = await start(nursery, api_key="sk-right-key-000000")
    async with OpenAIAdapter(make_config(up, api_key="sk-wrong-key-11111111")) as adapter:
        with trio.fail_after(IO_DEADLINE):
            health = await adapter.health()
    assert health == HealthStatus(
        live=True, ready=False, detail="the upstream refused the API key (HTTP 401)"
    )
    assert [r.path for r in up.requests] == ["/v1/models"]  # /health is open, so it is not asked


async def test_right_key_is_ready(nursery: trio.Nursery) -> None:
    up = await start(nursery, api_key="sk-right-key-000000")
    async with OpenAIAdapter(make_config(up, api_key="sk-right-key-000000")) as adapter:
        with trio.fail_after(IO_DEADLINE):
            assert (await adapter.health()).ready
    assert up.requests[0].headers["authorization"] == "Bearer sk-right-key-000000"


async def test_loading_model_is_live_not_ready(nursery: trio.Nursery) -> None:
    up = await start(nursery)
    up.loading = True
    async with OpenAIAdapter(make_config(up)) as adapter:
        with trio.fail_after(IO_DEADLINE):
            health = await adapter.health()
    assert health.live
    assert not health.ready
    assert "Loading model" in health.detail


@pytest.mark.parametrize("probe", ["health", "props", "engine_version"])
@pytest.mark.req("OC-ADAPT-OAI-6000")
async def test_down_upstream_never_raises(probe: str) -> None:
    port = await dead_port()
    config = make_config(FakeUpstream(), base_url=f"http://127.0.0.1:{port}/v1")
    async with OpenAIAdapter(config) as adapter:
        with trio.fail_after(IO_DEADLINE):
            result = await getattr(adapter, probe)()
    if probe == "health":
        assert result.live is False
        assert result.ready is False
        assert "POOL_UNAVAILABLE" in result.detail
    elif probe == "props":
        assert result == WorkerProps()
    else:
        assert result.engine == "unknown"
        assert result.version == "unknown"


@pytest.mark.req("OC-ADAPT-OAI-6010")
async def test_engine_version_is_cached_for_log_records(nursery: trio.Nursery) -> None:
    up = await start(nursery)
    async with OpenAIAdapter(make_config(up)) as adapter:
        assert adapter.engine_version_cache is None
        with trio.fail_after(IO_DEADLINE):
            await adapter.engine_version()
        assert adapter.engine_version_cache == "llama.cpp b1-0c1e570"


async def test_health_falls_back_to_engine_health_when_models_is_missing(
    nursery: trio.Nursery,
) -> None:
    up = await start(nursery, missing=["/v1/models"])
    async with OpenAIAdapter(make_config(up)) as adapter:
        with trio.fail_after(IO_DEADLINE):
            health = await adapter.health()
    assert health == HealthStatus(live=True, ready=True, detail="/models missing; /health ok")
    assert [r.path for r in up.requests] == ["/v1/models", "/health"]


async def test_health_fallback_while_loading_is_not_ready(nursery: trio.Nursery) -> None:
    up = await start(nursery, missing=["/v1/models"])
    up.loading = True
    async with OpenAIAdapter(make_config(up)) as adapter:
        with trio.fail_after(IO_DEADLINE):
            health = await adapter.health()
    assert health.live
    assert not health.ready


async def test_a_probe_body_over_the_cap_is_cut_and_closed(nursery: trio.Nursery) -> None:
    up = await start(nursery)
    big = {
        "object": "list",
        "data": [{"id": f"model-{i:07d}", "pad": "x" * 200} for i in range(6000)],
    }
    up.probe_overrides["/v1/models"] = (200, big)  # about 1.4 MiB: over the 1 MiB cap
    async with OpenAIAdapter(make_config(up)) as adapter:
        with trio.fail_after(IO_DEADLINE):
            health = await adapter.health()
    # The cut body is not JSON any more: live (it answered), not ready, and nothing leaked
    # (an unclosed body generator would be a ResourceWarning, an error here).
    assert health.live
    assert not health.ready


#: About 2 KB of nested `[`: msgspec raises RecursionError, not DecodeError, on it.
DEEP = b'{"data": ' + b"[" * 2100 + b"]" * 2100 + b"}"


@pytest.mark.parametrize("flavor", ["llama.cpp", "vllm"])
async def test_probes_answer_not_reported_for_json_nested_too_deep(
    nursery: trio.Nursery, flavor: str
) -> None:
    up = await start(nursery, flavor=flavor)
    for path in ("/props", "/slots", "/v1/models", "/version", "/info", "/api/version", "/health"):
        up.probe_overrides[path] = (200, DEEP)
    async with OpenAIAdapter(make_config(up)) as adapter:
        with trio.fail_after(IO_DEADLINE):
            health = await adapter.health()
            props = await adapter.props()
            version = await adapter.engine_version()
    assert health == HealthStatus(
        live=True, ready=False, detail="model 'test-model' is not listed (listed: none)"
    )
    assert props == WorkerProps(slots_total=None, slots_free=None, model=None, context_length=None)
    assert (version.engine, version.version) == ("unknown", "unknown")


async def test_a_probe_error_body_nested_too_deep_still_gives_the_status(
    nursery: trio.Nursery,
) -> None:
    up = await start(nursery)
    up.probe_overrides["/v1/models"] = (500, DEEP)
    async with OpenAIAdapter(make_config(up)) as adapter:
        with trio.fail_after(IO_DEADLINE):
            health = await adapter.health()
    assert health.live
    assert not health.ready
    assert health.detail.startswith("/models: HTTP 500")


async def test_health_lists_each_model_id_once_in_order(
    hostile: HostileUpstream, loopback_clock: MockClock
) -> None:
    """Regression (issue 14): `/models` listing an id twice was reported twice."""
    listing = [{"id": "a"}, {"id": "b"}, {"id": "a"}, {"model": "b"}, {"id": ""}]
    listing += [{"id": f"m{i}"} for i in range(10)]
    body = msgspec.json.encode({"data": listing})
    hostile.play(json_response(200, body))
    async with OpenAIAdapter(make_config(hostile, model="absent")) as adapter:
        with trio.fail_after(IO_DEADLINE):
            health = await adapter.health()
    assert not health.ready
    assert "(listed: a, b, m0, m1, m2)" in health.detail
