"""One local HTTP server for the download tests: serves a payload at any path on 127.0.0.1,
records the paths asked for, and can be told to answer with an error status. No test reaches
the network; a download is tested against this."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class PayloadServer:
    """Serves ``payload`` for every GET (``status``: answer that HTTP error instead)."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.status: int | None = None
        self.requests: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                server.requests.append(self.path)
                body = server.payload if server.status is None else b"<html>not found</html>"
                self.send_response(server.status or 200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        class Quiet(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address) -> None:
                pass  # a client hanging up early is not the test's business

        self.httpd = Quiet(("127.0.0.1", 0), Handler)
        self.root = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
