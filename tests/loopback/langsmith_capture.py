"""A LangSmith stand-in on 127.0.0.1 for tests and offline examples: the real ``langsmith``
client posts runs to it; it records every JSON body and answers 200."""

from __future__ import annotations

import gzip
import http.server
import json
import threading
from typing import Any, Self


class LangSmithCapture(http.server.ThreadingHTTPServer):
    """A LangSmith stand-in on 127.0.0.1: records every JSON body it is sent, answers 200."""

    daemon_threads = True

    def __init__(self) -> None:
        self.bodies: list[tuple[str, str, Any]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _record(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.headers.get("Content-Encoding") == "gzip":
                    raw = gzip.decompress(raw)
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = raw
                outer.bodies.append((self.command, self.path, body))
                payload = b"{}"
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_POST = do_PATCH = do_GET = _record

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def llm_runs(self) -> list[dict[str, Any]]:
        """Every run update that ended a chat-model run (the PATCH carrying outputs)."""
        return [b for method, path, b in self.bodies if method == "PATCH" and isinstance(b, dict) and b.get("outputs")
                and "generations" in b["outputs"]]

    def close(self) -> None:
        self.shutdown()
        self.server_close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
