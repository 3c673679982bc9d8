"""Which upstream to benchmark against: `sse_server.py` (Python, asyncio) or nginx (Debian).

Both serve the same pre-rendered chat streams; a raw-socket client (no HTTP library, no
parsing: it counts event frames) reads them, so the figure is the server's speed plus a floor
of client work. nginx runs with one worker (`worker_processes 1`, like the one-process Python
server), when `/usr/sbin/nginx` (or `nginx` on PATH) exists; otherwise only the Python server is
measured and the note says so. The faster one is reported; the benchmarks use `sse_server.py`
because it also has the hold, drip and close-recording modes that nginx cannot provide.

    python benchmarks/bench_upstream.py [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import machine, summarize, upstream_process, write_json
from sse_server import render_body

NGINX_CONF = """
worker_processes 1;
daemon off;
master_process off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log crit;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nodelay on;
    keepalive_requests 100000;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    types {{ }}
    default_type text/event-stream;
    server {{
        listen 127.0.0.1:{port};
        root {tmp}/www;
        # a static file answers GET only; serve it for POST too
        error_page 405 =200 $uri;
    }}
}}
"""


def nginx_binary() -> str | None:
    return shutil.which("nginx") or (
        "/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None
    )


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def nginx_process(binary: str, sizes: tuple[int, ...]) -> Iterator[int]:
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            d = os.path.join(tmp, "www", f"n{n}", "v1", "chat")
            os.makedirs(d)
            with open(os.path.join(d, "completions"), "wb") as f:
                f.write(render_body(n))
        port = free_port()
        conf = os.path.join(tmp, "nginx.conf")
        with open(conf, "w") as f:
            f.write(NGINX_CONF.format(tmp=tmp, port=port))
        proc = subprocess.Popen([binary, "-c", conf, "-p", tmp], stderr=subprocess.DEVNULL)
        try:
            for _ in range(200):
                try:
                    import socket

                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.02)
            yield port
        finally:
            proc.terminate()
            proc.wait(5)


def measure(port: int, quick: bool, per_size: bool) -> dict[str, Any]:
    """`per_size`: nginx's static files are per size (/n100/..., /n10000/...)."""
    import _contenders as c

    single = []
    for _ in range(5 if quick else 20):
        frames, secs = _single(port, "/n10000" if per_size else "", 10_000)
        assert frames >= 10_000, frames
        single.append(10_000 / secs)
    conc = []
    for _ in range(1 if quick else 5):
        prefix = "/n100" if per_size else ""
        r = c.raw_concurrent(port, 1000, 100, path=f"{prefix}/v1/chat/completions")
        conc.append(100_000 / r["wall"])
    return {"single": summarize(single).as_dict(), "concurrent": summarize(conc).as_dict()}


def _single(port: int, prefix: str, n: int) -> tuple[int, float]:
    import socket

    import _contenders as c

    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(c.raw_request(port, c.chat_body(n), f"{prefix}/v1/chat/completions"))
        frames, tail = 0, b""
        while True:
            data = sock.recv(1 << 16)
            if not data:
                break
            joined = tail + data
            frames += joined.count(b"\n\n")
            tail = joined[-1:]
            if joined.endswith(b"data: [DONE]\n\n"):
                break
    return frames, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json")
    args = parser.parse_args()
    out: dict[str, Any] = {}
    with upstream_process() as port:
        out["sse_server"] = measure(port, args.quick, per_size=False)
    binary = nginx_binary()
    if binary:
        version = subprocess.run([binary, "-v"], capture_output=True, text=True).stderr.strip()
        with nginx_process(binary, (100, 10_000)) as port:
            out["nginx"] = measure(port, args.quick, per_size=True)
        out["nginx_version"] = version
    print("Upstream: raw-socket client reading pre-rendered chat streams (tokens/s, median)")
    print(f"  {'server':<12} {'1 × 10k-token stream':>22} {'1,000 × 100-token streams':>27}")
    for name in ("sse_server", "nginx"):
        if name in out:
            r = out[name]
            print(
                f"  {name:<12} {r['single']['median']:>22,.0f} {r['concurrent']['median']:>27,.0f}"
            )
    if "nginx" in out:
        faster = max(("sse_server", "nginx"), key=lambda k: out[k]["concurrent"]["median"])
        out["faster_concurrent"] = faster
        out["faster_single"] = max(
            ("sse_server", "nginx"), key=lambda k: out[k]["single"]["median"]
        )
        print(
            f"  faster at 1,000 streams: {faster}; at one stream: {out['faster_single']}"
            f" ({out.get('nginx_version', '')})"
        )
    else:
        print("  nginx not installed (apt-get install nginx-light to compare)")
    out["machine"] = machine()
    write_json(args.json, out)


if __name__ == "__main__":
    main()
