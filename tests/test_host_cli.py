"""`oai-adapter pool --config pools.toml` (the pools file, the table, `--once`, the live redraw)
and `oai-adapter bench` with several `--base-url` (benched through a host), against embedded
servers on loopback."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import pytest
import trio
from trio.testing import MockClock

from oai_adapter import Secret
from oai_adapter._cli import EXIT_OK, EXIT_USAGE, build_parser, main
from oai_adapter._cli._commands import run_bench
from oai_adapter._cli._pool import HEADERS, load_pools, run_pool
from oai_adapter._cli._term import Term
from oai_adapter.testing import open_upstream

from .conftest import IO_DEADLINE

KEY = "sk-pool-test-0123456789abcdef0123456789abcdef"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "GPU_KEY", "NO_COLOR"):
        monkeypatch.delenv(name, raising=False)


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _pools_file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "pools.toml"
    path.write_text(text)
    return str(path)


def _parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


# --- the file ------------------------------------------------------------------------------


def test_pools_file_gives_one_config_per_replica_with_the_key_from_the_named_variable(
    tmp_path: Path,
) -> None:
    path = _pools_file(
        tmp_path,
        """
[host]
probe_interval = 2.0
max_failovers = 1

[pools.chat-8b]
model = "llama-8b"
api = "completions"
timeout = 12
api_key_env = "GPU_KEY"

[pools.chat-8b.replicas]
gpu-0 = "http://10.0.0.5:8000/v1"
gpu-1 = "http://10.0.0.6:8000/v1"
""",
    )
    spec = load_pools(path, {"GPU_KEY": KEY})
    assert (spec.policy.probe_interval, spec.policy.max_failovers) == (2.0, 1)
    configs = spec.pools["chat-8b"]
    assert list(configs) == ["gpu-0", "gpu-1"]
    assert configs["gpu-1"].base_url == "http://10.0.0.6:8000/v1"
    assert configs["gpu-0"].model == "llama-8b"
    assert configs["gpu-0"].api == "completions"
    assert configs["gpu-0"].timeouts.first_token == 12.0
    assert configs["gpu-0"].api_key == Secret(KEY)


def test_pools_file_reads_openai_api_key_by_default(tmp_path: Path) -> None:
    path = _pools_file(
        tmp_path, '[pools.p]\nmodel = "m"\nreplicas = { r = "http://127.0.0.1:9/v1" }\n'
    )
    assert load_pools(path, {}).pools["p"]["r"].api_key is None
    assert load_pools(path, {"OPENAI_API_KEY": KEY}).pools["p"]["r"].api_key == Secret(KEY)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (
            '[pools.p]\nmodel = "m"\napi_key = "sk-x"\nreplicas = { r = "http://h:1/v1" }\n',
            "no API key in the file",
        ),
        ('[pools.p]\nmodel = "m"\nreplica = { r = "http://h:1/v1" }\n', "unknown key(s) replica"),
        ('[pools.p]\nmodel = "m"\n', "replicas must be a table"),
        ('[pools.p]\nreplicas = { r = "http://h:1/v1" }\n', "model must be"),
        ('[pools.p]\nmodel = "m"\nreplicas = { r = "ftp://h/v1" }\n', "replicas.r"),
        ('[pools.p]\nmodel = "m"\ntimeout = 0\nreplicas = { r = "http://h:1/v1" }\n', "timeout"),
        ('[host]\nbreaker_open = -1\n[pools.p]\nmodel = "m"\nreplicas = {}\n', "breaker_open"),
        ("[host]\nbreakers = 3\n", "not a HostPolicy field"),
        ("[pool.p]\n", "unknown table(s) pool"),
        ("[pools]\n", "name at least one pool"),
        ("pools = [", "not TOML"),
    ],
)
def test_a_bad_pools_file_is_a_usage_error_naming_the_key(
    tmp_path: Path, text: str, says: str
) -> None:
    path = _pools_file(tmp_path, text)
    with pytest.raises(ValueError, match=r"pools\.toml") as info:
        load_pools(path, {})
    assert says in str(info.value)
    assert "sk-x" not in str(info.value)


def test_pool_with_a_bad_file_exits_2_before_anything_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _pools_file(tmp_path, '[pools.p]\nmodel = "m"\n')
    assert main(["pool", "--config", path, "--once"]) == EXIT_USAGE
    assert "replicas must be a table" in capsys.readouterr().err
    assert main(["pool", "--config", str(tmp_path / "missing.toml"), "--once"]) == EXIT_USAGE


# --- the table -----------------------------------------------------------------------------


async def test_pool_once_prints_a_row_per_replica_and_exits_0(
    tmp_path: Path, loopback_clock: MockClock
) -> None:
    async with open_upstream(slots=4) as a, open_upstream(slots=2) as b:
        path = _pools_file(
            tmp_path,
            f'[pools.chat]\nmodel = "{a.model}"\n'
            f'[pools.chat.replicas]\ngpu-0 = "{a.base_url}"\ngpu-1 = "{b.base_url}"\n',
        )
        out, err = io.StringIO(), io.StringIO()
        with trio.fail_after(IO_DEADLINE):
            code = await run_pool(
                _parse("pool", "--config", path, "--once"), Term(out, err), trio.Event()
            )
    assert code == EXIT_OK, err.getvalue()
    lines = out.getvalue().splitlines()
    assert lines[0].split() == [*HEADERS]
    rows = {line.split()[1]: line.split() for line in lines[2:]}
    assert rows["gpu-0"] == [
        "chat",
        "gpu-0",
        "yes",
        "closed",
        "0/4",
        "4",
        "llama.cpp",
        "b1-0c1e570",
    ]
    assert rows["gpu-1"] == [
        "chat",
        "gpu-1",
        "yes",
        "closed",
        "0/2",
        "2",
        "llama.cpp",
        "b1-0c1e570",
    ]
    assert "\x1b[" not in out.getvalue()  # not a terminal: no redraw codes


async def test_pool_once_exits_1_when_a_pool_has_no_ready_replica(
    tmp_path: Path, loopback_clock: MockClock
) -> None:
    async with open_upstream() as a:
        a.loading = True  # answers 503 "Loading model": live, not ready
        path = _pools_file(
            tmp_path,
            f'[pools.chat]\nmodel = "{a.model}"\nreplicas = {{ gpu-0 = "{a.base_url}" }}\n',
        )
        out, err = io.StringIO(), io.StringIO()
        with trio.fail_after(IO_DEADLINE):
            code = await run_pool(
                _parse("pool", "--config", path, "--once"), Term(out, err), trio.Event()
            )
    assert code == 1
    assert "pool chat: no replica is ready" in err.getvalue()
    assert out.getvalue().splitlines()[2].split()[:4] == ["chat", "gpu-0", "no", "closed"]


async def test_pool_on_a_terminal_redraws_every_interval_until_ctrl_c(
    tmp_path: Path, loopback_clock: MockClock
) -> None:
    async with open_upstream() as a:
        path = _pools_file(
            tmp_path,
            f'[pools.chat]\nmodel = "{a.model}"\nreplicas = {{ gpu-0 = "{a.base_url}" }}\n',
        )
        out = _Tty()
        interrupted = trio.Event()
        codes: list[int] = []
        with trio.fail_after(IO_DEADLINE):
            async with trio.open_nursery() as nursery:

                async def pool() -> None:
                    codes.append(
                        await run_pool(
                            _parse("pool", "--config", path), Term(out, io.StringIO()), interrupted
                        )
                    )

                nursery.start_soon(pool)
                await trio.sleep(2.5)  # virtual: three draws, at 0, 1 and 2 s
                interrupted.set()
    assert codes == [EXIT_OK]
    draws = out.getvalue().split("\x1b[H\x1b[2J")[1:]
    assert len(draws) == 3
    assert all(d.splitlines()[2].split()[1] == "gpu-0" for d in draws)


# --- bench through a host ------------------------------------------------------------------


async def test_bench_with_several_base_urls_spreads_the_requests_over_a_host(
    loopback_clock: MockClock,
) -> None:
    async with open_upstream() as a, open_upstream() as b:
        args = _parse(
            "bench", "--base-url", a.base_url, "--base-url", b.base_url, "--model", a.model,
            "--requests", "8", "--concurrency", "4", "--json",
        )  # fmt: skip
        assert args.base_urls == [a.base_url, b.base_url]
        out = io.StringIO()
        with trio.fail_after(IO_DEADLINE):
            code = await run_bench(args, Term(out, io.StringIO()), trio.Event())
    assert code == EXIT_OK
    doc = json.loads(out.getvalue())
    assert (doc["requests"], doc["succeeded"]) == (8, 8)
    served = (len(a.completion_requests()), len(b.completion_requests()))
    assert sum(served) == 8
    assert min(served) >= 1  # least loaded: 4 at a time cannot all go to one replica


def test_bench_with_the_same_server_twice_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = "http://127.0.0.1:9/v1"
    with pytest.raises(SystemExit) as info:
        main(["bench", "--base-url", url, "--base-url", url, "--model", "m"])
    assert info.value.code == EXIT_USAGE
    assert "the same server is given twice" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "--base-url", url, "--base-url", "ftp://h/v1", "--model", "m"])
    assert "not an http(s) URL" in capsys.readouterr().err
