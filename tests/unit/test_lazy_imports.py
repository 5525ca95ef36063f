"""``import bestroute_lc``, its pure parts and the faces a user imports first (the LangChain
chat model, the engine, the LlamaIndex LLM, the local default factory) load neither torch nor
transformers: those come in when a model is loaded (issue 13). Every public name still resolves."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

import bestroute_lc

HEAVY = ("torch", "transformers")


def assert_light(imports: str) -> None:
    """Run ``imports`` in a fresh interpreter (this one has torch already) and fail if it
    loaded torch or transformers."""
    code = (
        f"import sys\n{imports}\n"
        f"heavy = sorted(m for m in {HEAVY!r} if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_every_public_name_resolves() -> None:
    for name in bestroute_lc.__all__:
        assert getattr(bestroute_lc, name) is not None
    assert set(bestroute_lc.__all__) <= set(dir(bestroute_lc))


def test_the_package_and_its_pure_parts_do_not_import_torch() -> None:
    assert_light("import bestroute_lc\nfrom bestroute_lc import Pool, PoolMember, Prices, choose, NBilling")


def test_the_chat_model_and_the_engine_do_not_import_torch() -> None:
    assert_light("from bestroute_lc import BestRouteChatModel, BestRouteEngine, BestRouteError")


def test_the_llamaindex_llm_does_not_import_torch() -> None:
    pytest.importorskip("llama_index.core")
    assert_light("from bestroute_llamaindex import BestRouteLLM")


def test_the_local_default_factory_does_not_import_torch_until_called() -> None:
    assert_light("import bestroute_lc.local.default\nfrom bestroute_lc.local.default import default_chat_model")


def test_import_time_is_reported(capsys: pytest.CaptureFixture[str]) -> None:
    """Information only (goal: <= 0.5 s); not asserted, since machine load decides it."""
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import bestroute_lc"], check=True, timeout=120)
        best = min(best, time.perf_counter() - start)
    with capsys.disabled():
        print(f"\n`python -c 'import bestroute_lc'`: {best:.2f} s wall (best of 3, interpreter start included)")
