"""A small JSON API for the HTTP source tests: records from a JSON lines file, paged, after an
`updated_since`, behind a bearer token; the first request of page 2 of each listing gets a 429
with Retry-After, the first of page 3 a 500. Every request is logged as one line.

    http_api.py PORT RECORDS_FILE LOG_FILE TOKEN [DELAY_MS]
"""
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

port, records_file, log_file, token = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
delay = int(sys.argv[5]) / 1000 if len(sys.argv) > 5 else 0
faulted = set()
lock = threading.Lock()


class Api(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def answer(self, status, body, headers=()):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)
        with lock, open(log_file, "a") as log:
            log.write(f"{status} {self.path}\n")

    def do_GET(self):
        url = urlparse(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        if self.headers.get("Authorization") != f"Bearer {token}":
            return self.answer(401, {"error": "unauthorized"})
        if url.path != "/orders":
            return self.answer(404, {"error": "no such resource"})
        page, per_page = int(query.get("page", "1")), int(query.get("per_page", "100"))
        since = query.get("updated_since")
        key = (since, page)
        with lock:
            first = key not in faulted
            faulted.add(key)
        if first and page == 2:
            return self.answer(429, {"error": "slow down"}, [("Retry-After", "1")])
        if first and page == 3:
            return self.answer(500, {"error": "try again"})
        time.sleep(delay)
        with open(records_file) as f:
            records = [json.loads(line) for line in f if line.strip()]
        if since is not None:
            records = [r for r in records if r["updated_at"] > since]
        records.sort(key=lambda r: (r["updated_at"], r["id"]))
        items = records[(page - 1) * per_page : page * per_page]
        self.answer(200, {"data": {"items": items}, "page": page})


ThreadingHTTPServer(("127.0.0.1", port), Api).serve_forever()
