"""Example service: serves index.html plus the host's name on BIND:PORT; /up is the health check."""
import http.server
import os
import signal
import socket
import sys

# PID 1 in its container ignores SIGTERM unless it handles it: stop at once
# when deploy (or docker stop) asks, instead of waiting out the grace period.
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

BIND = os.environ.get("BIND", "0.0.0.0")
PORT = int(os.environ.get("PORT", "8000"))
PAGE = open(os.path.join(os.path.dirname(__file__), "index.html"), "rb").read()


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"ok\n" if self.path == "/up" else PAGE + f"served by {socket.gethostname()}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


http.server.ThreadingHTTPServer((BIND, PORT), Handler).serve_forever()
