"""BEST-Route for LlamaIndex: ``BestRouteLLM``, a ``FunctionCallingLLM`` over the same engine
as ``bestroute_lc.BestRouteChatModel`` (``pip install 'bestroute[llamaindex]'``)."""

from bestroute_llamaindex.llm import BestRouteLLM, to_langchain, to_response

__all__ = ["BestRouteLLM", "to_langchain", "to_response"]
