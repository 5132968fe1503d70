"""Stub upstreams for the Nginx tests, run on the test host (python3 stdlib only).

    python3 stub_upstream.py '{"8015": "/api/scheduler/", "8014": "/"}'

Each port answers like a real app mounted at its prefix: 200 with the path it received
(request line, query included) for paths under the prefix, 404 otherwise. Request bodies
are read whole, so upload limits are Nginx's alone.
"""

import json
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def handler(prefix: str):
    class Stub(BaseHTTPRequestHandler):
        def _answer(self):
            length = int(self.headers.get("Content-Length") or 0)
            while length > 0:
                length -= len(self.rfile.read(min(length, 1 << 20)) or b"x" * length)
            status = 200 if self.path.startswith(prefix) else 404
            body = self.path.encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _answer

        def log_message(self, *args):
            pass

    return Stub


class DualStack(ThreadingHTTPServer):
    """Nginx resolves `localhost` to ::1 and 127.0.0.1, like a published container port."""

    address_family = socket.AF_INET6

    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


if __name__ == "__main__":
    for port, prefix in json.loads(sys.argv[1]).items():
        server = DualStack(("::", int(port)), handler(prefix))
        threading.Thread(target=server.serve_forever, daemon=True).start()
    threading.Event().wait()
