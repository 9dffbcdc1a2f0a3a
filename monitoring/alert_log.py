"""A webhook receiver for Alertmanager that writes each alert it gets as one JSON line (stdout, or
a file): the compose stack's stand-in for a pager, and the end of the alerting test's chain.

python monitoring/alert_log.py [--host 0.0.0.0] [--port 5001] [--out alerts.jsonl]

Standard library only, so it runs in any image with a Python.
"""

from __future__ import annotations

import argparse
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TextIO


def handler(out: TextIO) -> type[BaseHTTPRequestHandler]:
    class Receive(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", "0"))
            try:
                body: dict[str, Any] = json.loads(self.rfile.read(length))
            except ValueError:
                self.send_response(400)
                self.end_headers()
                return
            for alert in body.get("alerts", []):
                out.write(json.dumps({"receiver": body.get("receiver"), **alert}) + "\n")
            out.flush()
            self.send_response(200)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass  # the alerts are the log

    return Receive


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5001)
    parser.add_argument("--out", help="append to this file instead of stdout")
    args = parser.parse_args()
    out = open(args.out, "a") if args.out else sys.stdout  # noqa: SIM115 (lives as long as the server)
    ThreadingHTTPServer((args.host, args.port), handler(out)).serve_forever()


if __name__ == "__main__":
    main()
