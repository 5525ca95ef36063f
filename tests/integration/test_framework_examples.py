"""The framework examples under examples/ run offline and do what they print (each in a fresh
interpreter, bounded in time, as a user would run them)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.network_loopback
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run_example(name: str) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, str(EXAMPLES / name)], capture_output=True, text=True, timeout=180, env=env,
                          cwd=EXAMPLES.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_langchain_agent_example() -> None:
    out = run_example("langchain_agent.py")
    assert out.count("model call ->") >= 2 and "agent said:" in out  # the tool call, then the answer
    assert "total: " in out and "$" in out


def test_llamaindex_rag_example() -> None:
    out = run_example("llamaindex_rag.py")
    assert "retrieved: ['routing.md'" in out  # MiniLM embeddings found the right document
    assert out.count("llm call ->") >= 2 and "chat:" in out


def test_langsmith_cost_example() -> None:
    out = run_example("langsmith_cost.py")
    lines = [line for line in out.splitlines() if line.startswith("traced run:")]
    assert len(lines) == 2 and all("$" in line and "ls_model_name=" in line for line in lines)
