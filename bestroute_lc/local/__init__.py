"""Offline pool members: small GGUF models run in-process with llama-cpp-python.

``bestroute_lc.local.models``: locate / assemble / verify the model files shipped in PyPI packages.
``bestroute_lc.local.chat_model``: ``ChatLlamaCppLocal``, a LangChain chat model over llama.cpp.
``bestroute_lc.local.pool``: the local pool (members, prices) used by ``training/local_pool``.

Importing this package imports neither llama-cpp-python nor the model packages.
"""

from bestroute_lc.local.models import (
    MODELS,
    ModelFileError,
    ModelSpec,
    default_cache_dir,
    model_path,
)

__all__ = ["MODELS", "ModelFileError", "ModelSpec", "default_cache_dir", "model_path"]
