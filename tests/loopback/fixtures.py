"""pytest fixtures / shared singletons for the loopback servers.

Use from a conftest.py (or test module)::

    from tests.loopback.fixtures import (  # noqa: F401
        loopback_openai_server, loopback_mistral_server,
        shared_openai_server, shared_mistral_server,
    )

* ``loopback_openai_server`` / ``loopback_mistral_server``: a fresh server per
  test (function scope), stopped afterwards.
* ``shared_openai_server`` / ``shared_mistral_server``: one process-wide server
  per protocol (session scope, see :func:`get_shared_server`); ``reset()`` is
  called after each test that requests it so faults/logs never leak.
* :func:`get_shared_server` is usable outside fixtures, e.g. inside the
  ``chat_model_params`` property of a langchain-tests suite.
"""

from __future__ import annotations

import atexit
import threading
from collections.abc import Iterator

import pytest

from .server import LoopbackLLMServer

#: Models every shared server hosts (unknown names are served too).
SHARED_MODELS = {
    "openai": ["loop-gpt", "loop-gpt-mini", "loop-gpt-large"],
    "mistral": ["loop-mistral", "loop-mistral-small", "loop-mistral-large"],
}

_shared: dict[str, LoopbackLLMServer] = {}
_shared_lock = threading.Lock()


def get_shared_server(protocol: str = "openai") -> LoopbackLLMServer:
    """Process-wide server for ``protocol``, started lazily, stopped at exit."""
    with _shared_lock:
        srv = _shared.get(protocol)
        if srv is None or not srv.running:
            srv = LoopbackLLMServer(protocol, models=SHARED_MODELS.get(protocol, [])).start()
            _shared[protocol] = srv
        return srv


def stop_shared_servers() -> None:
    with _shared_lock:
        servers = list(_shared.values())
        _shared.clear()
    for srv in servers:
        srv.stop()


atexit.register(stop_shared_servers)


@pytest.fixture(scope="session")
def _loopback_shared_servers() -> Iterator[None]:
    yield
    stop_shared_servers()


@pytest.fixture
def shared_openai_server(_loopback_shared_servers: None) -> Iterator[LoopbackLLMServer]:
    srv = get_shared_server("openai")
    yield srv
    srv.reset()


@pytest.fixture
def shared_mistral_server(_loopback_shared_servers: None) -> Iterator[LoopbackLLMServer]:
    srv = get_shared_server("mistral")
    yield srv
    srv.reset()


@pytest.fixture
def loopback_openai_server() -> Iterator[LoopbackLLMServer]:
    with LoopbackLLMServer("openai", models=SHARED_MODELS["openai"]) as srv:
        yield srv


@pytest.fixture
def loopback_mistral_server() -> Iterator[LoopbackLLMServer]:
    with LoopbackLLMServer("mistral", models=SHARED_MODELS["mistral"]) as srv:
        yield srv
