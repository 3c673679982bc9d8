#!/usr/bin/env bash
# `just compat`: start a real third-party OpenAI-compatible server on loopback (LiteLLM's proxy,
# pinned, in its own venv `.venv-compat` so the main lock file stays lean), run
# `oai-adapter check` against it, and save the raw streams it sends under `.compat-out/`.
# Slow (installs LiteLLM the first time); not part of `just test`. Exit code: that of the check
# and bench against `compat-model`. Everything listens on
# 127.0.0.1 only; LiteLLM's start-up fetch of its price map is switched off.
set -euo pipefail
cd "$(dirname "$0")/.."

LITELLM_VERSION="${LITELLM_VERSION:-1.108.7}"
VENV=.venv-compat
OUT=.compat-out
mkdir -p "$OUT"

if ! "$VENV/bin/python" -c "import litellm" 2>/dev/null; then
    echo "compat: installing litellm[proxy]==$LITELLM_VERSION into $VENV"
    uv venv --quiet --allow-existing "$VENV" --python 3.11
    uv pip install --quiet --python "$VENV/bin/python" "litellm[proxy]==$LITELLM_VERSION"
fi

work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { uv run --locked --quiet python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

uv run --locked --quiet python compat/backend.py "$work/backend.port" &
pids+=($!)
for _ in $(seq 100); do [ -s "$work/backend.port" ] && break; sleep 0.1; done
backend="http://127.0.0.1:$(cat "$work/backend.port")/v1"

port=$(free_port)
sed "s#@BACKEND@#$backend#g" compat/litellm.yaml.in > "$work/litellm.yaml"
# LiteLLM refuses to start without a master key; a fresh random one per run, given to the
# adapter the documented way (OPENAI_API_KEY), never printed.
master_key="sk-compat-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
export OPENAI_API_KEY="$master_key"
echo "compat: starting LiteLLM $LITELLM_VERSION on 127.0.0.1:$port (backend $backend)"
LITELLM_MASTER_KEY="$master_key" LITELLM_LOCAL_MODEL_COST_MAP=True LITELLM_TELEMETRY=False NO_DOCS=True \
    "$VENV/bin/litellm" --config "$work/litellm.yaml" --host 127.0.0.1 --port "$port" \
    > "$OUT/litellm.log" 2>&1 &
pids+=($!)
base="http://127.0.0.1:$port"
for i in $(seq 240); do
    curl -fs "$base/health/liveliness" >/dev/null 2>&1 && break
    if ! kill -0 "${pids[1]}" 2>/dev/null; then echo "compat: LiteLLM exited; see $OUT/litellm.log"; exit 1; fi
    if [ "$i" = 240 ]; then echo "compat: LiteLLM did not come up; see $OUT/litellm.log"; exit 1; fi
    sleep 0.5
done

# Raw streams, byte for byte (headers in *.headers), for docs/compat.md and tests/fixtures/.
capture() {  # name path json
    curl -sN -D "$OUT/$1.headers" -H 'content-type: application/json' \
        -H "authorization: Bearer $master_key" \
        -d "$3" "$base$2" > "$OUT/$1.sse" || true
}
capture chat-usage /v1/chat/completions \
    '{"model":"compat-model","stream":true,"max_tokens":8,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"Hi"}]}'
capture chat-nousage /v1/chat/completions \
    '{"model":"compat-model","stream":true,"max_tokens":8,"messages":[{"role":"user","content":"Hi"}]}'
capture completions-usage /v1/completions \
    '{"model":"compat-model-text","stream":true,"max_tokens":8,"stream_options":{"include_usage":true},"prompt":"Hi"}'
capture completions-nousage /v1/completions \
    '{"model":"compat-model-text","stream":true,"max_tokens":8,"prompt":"Hi"}'
capture responses /v1/responses \
    '{"model":"compat-model","stream":true,"max_output_tokens":8,"input":"Hi"}'
capture mock-chat /v1/chat/completions \
    '{"model":"compat-mock","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"Hi"}]}'
capture mock-completions /v1/completions \
    '{"model":"compat-mock","stream":true,"prompt":"Hi"}'
capture mock-responses /v1/responses \
    '{"model":"compat-mock","stream":true,"input":"Hi"}'
capture unknown-model /v1/chat/completions \
    '{"model":"no-such-model","stream":true,"messages":[{"role":"user","content":"Hi"}]}'
# A wrong key and no key (FACTS.md: without a database LiteLLM answers 400 / a bare 500).
curl -s -D "$OUT/wrong-key.headers" -H 'content-type: application/json' \
    -H "authorization: Bearer sk-wrong-key-for-compat" -o "$OUT/wrong-key.json" \
    -d '{"model":"compat-model","stream":true,"messages":[{"role":"user","content":"Hi"}]}' \
    "$base/v1/chat/completions" || true
curl -s -D "$OUT/no-key.headers" -H 'content-type: application/json' -o "$OUT/no-key.json" \
    -d '{"model":"compat-model","stream":true,"messages":[{"role":"user","content":"Hi"}]}' \
    "$base/v1/chat/completions" || true
echo "compat: raw streams saved in $OUT/"

status=0
echo "compat: oai-adapter check --model compat-model"
uv run --locked --quiet oai-adapter check --base-url "$base/v1" --model compat-model || status=$?
# Informational: LiteLLM's mock cannot stream /v1/responses (a 200 whose first event is an
# error, docs/compat.md quirk 8), so its check has a FAIL row by design.
echo "compat: oai-adapter check --model compat-mock (informational)"
uv run --locked --quiet oai-adapter check --base-url "$base/v1" --model compat-mock || true
echo "compat: oai-adapter bench --model compat-model --concurrency 4 --requests 16"
uv run --locked --quiet oai-adapter bench --base-url "$base/v1" --model compat-model \
    --concurrency 4 --requests 16 || status=$?
exit "$status"
