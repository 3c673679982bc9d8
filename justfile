# oai_adapter — every recipe sets itself up: a fresh machine needs only Python >= 3.11 and `just`.

set shell := ["bash", "-euo", "pipefail", "-c"]

uv := "uv"

# Install uv (if missing) and the locked dependencies into .venv.
setup:
    command -v {{uv}} >/dev/null 2>&1 || python3 -m pip install --quiet uv
    {{uv}} sync --locked --quiet

# Stream a completion from the embedded upstream through the adapter.
demo *ARGS: setup
    {{uv}} run --locked --quiet oai-adapter demo {{ARGS}}

# A small orchestrator on an AdapterHost (examples/orchestrator.py): a job queue, workers, three
# replicas on embedded servers, deadlines, a replica restarted mid-run, cancel on shutdown.
example *ARGS: setup
    {{uv}} run --locked --quiet python examples/orchestrator.py {{ARGS}}

# Run the test suite.
test *ARGS: setup
    {{uv}} run --locked --quiet pytest -q {{ARGS}}

# ruff + mypy strict.
lint: setup
    {{uv}} run --locked --quiet ruff check oai_adapter tests benchmarks compat examples
    {{uv}} run --locked --quiet ruff format --check oai_adapter tests benchmarks compat examples
    {{uv}} run --locked --quiet mypy

# Reformat the code.
fmt: setup
    {{uv}} run --locked --quiet ruff format oai_adapter tests benchmarks compat examples
    {{uv}} run --locked --quiet ruff check --fix oai_adapter tests benchmarks compat examples

# Benchmarks: print figures and ratios (never asserted in tests). `just bench --quick` for a smoke run.
bench *ARGS: setup
    {{uv}} run --locked --quiet python benchmarks/run_all.py {{ARGS}}


# LiteLLM's proxy (a real third-party server, own venv .venv-compat) on loopback + `oai-adapter check` (slow; not in `just test`).
compat: setup
    bash compat/run.sh

# llama.cpp (llama-cpp-python[server], own venv; compiles llama.cpp the first time) with a tiny local GGUF + `oai-adapter check`.
compat-llama: setup
    bash compat/run_llama.sh

# Soak: 100,000 tasks through an AdapterHost pool with faults, cancels and rebinds; verdict + plot in .soak-out/ (a few minutes; not in `just test`). `just soak --quick`: 10,000 tasks.
soak *ARGS: setup
    {{uv}} run --locked --quiet python benchmarks/soak.py {{ARGS}}
