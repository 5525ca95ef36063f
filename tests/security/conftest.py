"""Fixtures for the sandbox attack tests: a fake API key in the parent, a unique marker,
a loopback listener, and helpers that look for what escaped."""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

KEY_PREFIX = "sk-test-FAKE-"


@pytest.fixture(autouse=True)
def fake_key(monkeypatch: pytest.MonkeyPatch) -> str:
    """A fake OpenAI key in the test process's environment, as a deployment would have."""
    key = KEY_PREFIX + secrets.token_hex(16)
    monkeypatch.setenv("OPENAI_API_KEY", key)
    return key


@pytest.fixture(autouse=True)
def _debug_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)


@pytest.fixture
def marker() -> str:
    """A string unique to this test, put into whatever the attacks leave behind."""
    return "bestroute-sec-" + secrets.token_hex(8)


def processes_with(marker: str) -> list[tuple[int, str]]:
    """(pid, command line) of every live process whose command line contains ``marker``."""
    found = []
    needle = marker.encode()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{name}/cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline:
            found.append((int(name), cmdline.replace(b"\0", b" ").decode(errors="replace")))
    return found


def survivors(marker: str, grace_s: float = 0.25) -> list[tuple[int, str]]:
    """Processes carrying ``marker`` still alive ``grace_s`` after the call returned (the
    grace only absorbs processes that are already dying)."""
    deadline = time.monotonic() + grace_s
    while True:
        alive = processes_with(marker)
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.05)


def kill_marked(marker: str) -> None:
    """Clean-up: SIGKILL the processes this test's attacks left behind (by pid)."""
    for pid, _cmdline in processes_with(marker):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


class Listener:
    """A TCP server on 127.0.0.1 that records every connection and every byte."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(0.1)
        self.port = self.server.getsockname()[1]
        self.connections = 0
        self.received = b""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="security-listener", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.connections += 1
            conn.settimeout(1.0)
            try:
                while True:
                    data = conn.recv(65536)
                    if not data:
                        break
                    with self._lock:
                        self.received += data
            except OSError:
                pass
            finally:
                conn.close()

    def settle(self, seconds: float = 0.3) -> None:
        time.sleep(seconds)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.server.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    server = Listener()
    try:
        yield server
    finally:
        server.close()
