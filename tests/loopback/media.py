"""Offline media for the standard suite's multimodal tests.

langchain-tests downloads a PNG / PDF / WAV from the internet with ``httpx.get(...)``
inside those tests; there is no network here, so the suite module's ``httpx`` reference
is replaced by a stub returning small, valid, locally generated files. Only that
module's name binding is patched; the real httpx (used by ChatMistralAI) and httpx2
(used by the OpenAI SDK) are untouched. Use the ``offline_standard_suite_media``
fixture (autouse it in a conftest).
"""

from __future__ import annotations

import io
import struct
import types
import wave
import zlib
from typing import Any

import pytest


def _png_1x1() -> bytes:
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00\xff\x00\x00")
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _pdf_minimal() -> bytes:
    return (
        b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n"
        b"2 0 obj<</Type/Pages/Kids[3 0 R]/Count 1>>endobj\n"
        b"3 0 obj<</Type/Page/Parent 2 0 R/MediaBox[0 0 72 72]>>endobj\n"
        b"trailer<</Root 1 0 R>>\n%%EOF\n"
    )


def _wav_silence() -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(b"\x00\x00" * 800)
    return buf.getvalue()


def _fake_get(url: str, *args: Any, **kwargs: Any) -> Any:
    lower = url.lower()
    if lower.endswith(".pdf"):
        content = _pdf_minimal()
    elif lower.endswith(".wav"):
        content = _wav_silence()
    else:
        content = _png_1x1()
    return types.SimpleNamespace(content=content, status_code=200)


@pytest.fixture(autouse=True)
def offline_standard_suite_media(monkeypatch: pytest.MonkeyPatch) -> None:
    from langchain_tests.integration_tests import chat_models as suite

    monkeypatch.setattr(suite, "httpx", types.SimpleNamespace(get=_fake_get))
    monkeypatch.setenv("LANGCHAIN_TESTS_USER_AGENT", "bestroute-loopback-selftest/0 (offline)")
