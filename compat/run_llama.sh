#!/usr/bin/env bash
# `just compat-llama`: llama.cpp's engine through `llama-cpp-python[server]` (pinned, own venv
# `.venv-compat-llama`) serving a tiny model made here with the `gguf` package
# (compat/make_tiny_gguf.py), on 127.0.0.1; `oai-adapter check` against it; raw streams saved
# under `.compat-out/llama-*`. The first run compiles llama.cpp from source (no wheel in the
# registry): many minutes on two cores. The server's default `interrupt_requests=True` cuts a
# running stream short (`[DONE]`, no finish reason) whenever another request arrives, so the
# bench below would report WORKER_RESET for all but one request; it is turned off here
# (LLAMA_INTERRUPT_REQUESTS=True shows the quirk).
set -euo pipefail
cd "$(dirname "$0")/.."

LLAMA_CPP_PYTHON_VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
VENV=.venv-compat-llama
OUT=.compat-out
mkdir -p "$OUT"

if ! "$VENV/bin/python" -c "import llama_cpp.server, gguf" 2>/dev/null; then
    echo "compat: building llama-cpp-python[server]==$LLAMA_CPP_PYTHON_VERSION into $VENV (slow)"
    uv venv --quiet --allow-existing "$VENV" --python 3.11
    CMAKE_BUILD_PARALLEL_LEVEL=2 CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" \
        uv pip install --quiet --python "$VENV/bin/python" \
        "llama-cpp-python[server]==$LLAMA_CPP_PYTHON_VERSION" gguf numpy
fi

work=$(mktemp -d)
pid=""
cleanup() {
    if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

"$VENV/bin/python" compat/make_tiny_gguf.py "$work/tiny.gguf"
port=$("$VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
echo "compat: starting llama-cpp-python $LLAMA_CPP_PYTHON_VERSION on 127.0.0.1:$port"
"$VENV/bin/python" -m llama_cpp.server --model "$work/tiny.gguf" --model_alias compat-tiny \
    --host 127.0.0.1 --port "$port" --n_ctx 512 --n_threads 1 \
    --interrupt_requests "${LLAMA_INTERRUPT_REQUESTS:-False}" > "$OUT/llama.log" 2>&1 &
pid=$!
base="http://127.0.0.1:$port"
for i in $(seq 240); do
    curl -fs "$base/v1/models" >/dev/null 2>&1 && break
    if ! kill -0 "$pid" 2>/dev/null; then echo "compat: the server exited; see $OUT/llama.log"; exit 1; fi
    if [ "$i" = 240 ]; then echo "compat: the server did not come up; see $OUT/llama.log"; exit 1; fi
    sleep 0.5
done

capture() {  # name path json
    curl -sN -D "$OUT/llama-$1.headers" -H 'content-type: application/json' \
        -d "$3" "$base$2" > "$OUT/llama-$1.sse" || true
}
capture chat-usage /v1/chat/completions \
    '{"model":"compat-tiny","stream":true,"max_tokens":8,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"Hi"}]}'
capture chat-stop /v1/chat/completions \
    '{"model":"compat-tiny","stream":true,"messages":[{"role":"user","content":"Hi"}]}'
capture completions-usage /v1/completions \
    '{"model":"compat-tiny","stream":true,"max_tokens":8,"stream_options":{"include_usage":true},"prompt":"Hi"}'
capture responses /v1/responses \
    '{"model":"compat-tiny","stream":true,"input":"Hi"}'
for probe in health props slots version; do
    curl -s -o "$OUT/llama-probe-$probe.json" -w "%{http_code}\n" "$base/$probe" > "$OUT/llama-probe-$probe.status" || true
done
echo "compat: raw streams saved in $OUT/llama-*"

status=0
echo "compat: oai-adapter check --model compat-tiny"
uv run --locked --quiet oai-adapter check --base-url "$base/v1" --model compat-tiny || status=$?
echo "compat: oai-adapter bench --model compat-tiny --concurrency 4 --requests 16"
uv run --locked --quiet oai-adapter bench --base-url "$base/v1" --model compat-tiny \
    --concurrency 4 --requests 16 || status=$?
exit "$status"
