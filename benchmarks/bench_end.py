"""`End` after `[DONE]`: how long the consumer waits for `End` once the upstream said it finished.

Some servers keep the body open after `data: [DONE]` (hypercorn over HTTP/2; FACTS.md): a client
that waits for the body's end before reporting the finish waits for them. The adapter sends
`End` as soon as the upstream said it finished and leaves the body's tail to a drain it owns.

One process, one trio run: a raw trio socket server on 127.0.0.1 answers each request with a
chunked event stream of a few tokens and `[DONE]`, then either ends the body at once
(`clean`) or holds it open until the client goes away (`holds`). The server notes
`trio.current_time()` just before writing the `[DONE]` frame; the consumer notes it on reading
`End`; the figure is the difference (same clock, same process). Tasks run one after another on
one adapter, alternating the two servers, so both meet the same machine state.
Target (issue 16): p99 ≤ 1 ms on the server that holds the body open.

    python benchmarks/bench_end.py [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import load_average, machine, percentile, write_json

_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
    b"transfer-encoding: chunked\r\nconnection: keep-alive\r\n\r\n"
)


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _token(text: str) -> bytes:
    return b'data: {"choices":[{"index":0,"delta":{"content":"' + text.encode() + b'"}}]}\n\n'


_BODY = _chunk(b"".join(_token(f"t{i} ") for i in range(8)))
_FINISH = _chunk(b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n')
_DONE = _chunk(b"data: [DONE]\n\n")
_LAST = b"0\r\n\r\n"


async def _serve(hold: bool, done_at: list[float], task_status: Any) -> None:
    import trio

    async def handle(stream: trio.SocketStream) -> None:
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                while len(buf) < length:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    buf += data
                buf = buf[length:]
                await stream.send_all(_HEAD + _BODY + _FINISH)
                done_at.append(trio.current_time())
                await stream.send_all(_DONE)
                if hold:  # the body stays open: read (and drop) until the client goes away
                    while await stream.receive_some(65536):
                        pass
                    return
                await stream.send_all(_LAST)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(handle, listeners)


def measure(tasks: int) -> dict[str, Any]:
    import trio

    from oai_adapter import AdapterConfig, End, OpenAIAdapter, TaskRequest

    waits: dict[str, list[float]] = {"clean": [], "holds": []}

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            adapters = {}
            marks: dict[str, list[float]] = {"clean": [], "holds": []}
            for name in ("clean", "holds"):
                port = await nursery.start(_serve, name == "holds", marks[name])
                config = AdapterConfig(base_url=f"http://127.0.0.1:{port}/v1", model="m")
                adapters[name] = await nursery.start(_open, config)
            for i in range(tasks):
                for name, adapter in adapters.items():
                    req = TaskRequest(task_id=f"{name}-{i}", prompt="hi")
                    async with adapter.submit(req) as events:
                        async for ev in events:
                            if type(ev) is End:
                                waits[name].append(trio.current_time() - marks[name][-1])
            nursery.cancel_scope.cancel()

    async def _open(config: AdapterConfig, task_status: Any) -> None:
        async with OpenAIAdapter(config) as adapter:
            task_status.started(adapter)
            await trio.sleep_forever()

    trio.run(main)
    result: dict[str, Any] = {"tasks": tasks}
    for name, values in waits.items():
        ms = [v * 1000.0 for v in values]
        result[name] = {"p50_ms": percentile(ms, 50), "p99_ms": percentile(ms, 99)}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json")
    args = parser.parse_args()
    tasks = 100 if args.quick else 1000
    res = measure(tasks)
    res["machine"] = machine()
    print(f"load average {load_average()}")
    print(f"[DONE] written → End read, {tasks} tasks per server, one after another (ms)")
    for name, label in (("clean", "body ends after [DONE]"), ("holds", "body held open")):
        r = res[name]
        print(f"  {label:<24} p50 {r['p50_ms']:7.3f}   p99 {r['p99_ms']:7.3f}")
    ok = res["holds"]["p99_ms"] <= 1.0
    print(
        f"held open: p99 ≤ 1 ms {'met' if ok else 'MISSED'} (before issue 16: the 50 ms drain grace)"
    )
    if args.json:
        write_json(args.json, res)


if __name__ == "__main__":
    main()
