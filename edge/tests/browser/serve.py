"""The device page's own web server for edge/tests/browser.rs: serves the test page (this
directory) and the SDK (edge/sdk, under /sdk/) from another origin than cue-prefetch's, so the
browser's CORS checks run for real, and appends every POST /report body as one line to the
reports file. Loopback only; the test kills it."""

import argparse
import http.server
import os
import sys

TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8"}
MAX_REPORT = 64 * 1024


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--page-dir", required=True)
    p.add_argument("--sdk-dir", required=True)
    p.add_argument("--reports", required=True)
    a = p.parse_args()
    reports = open(a.reports, "a", buffering=1)

    class Handler(http.server.BaseHTTPRequestHandler):
        def file(self, root, rel):
            path = os.path.realpath(os.path.join(root, rel))
            if not path.startswith(os.path.realpath(root) + os.sep) or not os.path.isfile(path):
                self.send_error(404)
                return
            body = open(path, "rb").read()
            self.send_response(200)
            self.send_header("Content-Type", TYPES.get(os.path.splitext(path)[1], "application/octet-stream"))
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            path = self.path.split("?", 1)[0]
            if path.startswith("/sdk/"):
                self.file(a.sdk_dir, path[len("/sdk/"):])
            else:
                self.file(a.page_dir, path.lstrip("/"))

        def do_POST(self):
            n = int(self.headers.get("Content-Length") or 0)
            if self.path != "/report" or n > MAX_REPORT:
                self.send_error(400)
                return
            line = self.rfile.read(n).decode("utf-8", "replace").replace("\n", " ")
            reports.write(line + "\n")
            self.send_response(204)
            self.end_headers()

        def log_message(self, fmt, *args):
            sys.stderr.write("serve.py: " + (fmt % args) + "\n")

    server = http.server.ThreadingHTTPServer(("127.0.0.1", a.port), Handler)
    print("listening", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
