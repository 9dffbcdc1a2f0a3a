"""`make serve`: Ray Serve on this machine, every model in the model directory, on loopback.

Starts a local Ray (CPU unless a GPU is present) with HAProxy in front, runs the applications
from `deployments.app`, waits until every model answers, prints an example request, and serves
until interrupted. The helpers it uses (and the tests, bench and chaos use) are in
`deployments.local`; this module is only the entry point.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from deployments.loopback import keep_ray_on_loopback

if "ray" not in sys.modules:
    keep_ray_on_loopback()  # `make serve`: before ray is imported (other entry points call it first)

from deployments.local import start

EXAMPLE = {"n": 4, "label": 3, "steps": 20, "sampler": "dpmpp_2m", "seed": 42}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-dir", default="exported")
    parser.add_argument("--host", default="127.0.0.1", help="HTTP bind address (loopback by default)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--metrics-port", type=int, default=8080, help="Ray's Prometheus metrics export port")
    parser.add_argument("--dashboard-port", type=int, default=8265, help="Ray dashboard (loopback only)")
    parser.add_argument("--access-log", action="store_true", help="log every request (costs CPU per request)")
    args = parser.parse_args()
    url = start(
        args.model_dir, args.host, args.port, args.metrics_port, args.dashboard_port, access_log=args.access_log
    )
    print(f"\ngenserve is ready at {url} (OpenAPI: {url}/docs, metrics: http://127.0.0.1:{args.metrics_port}/metrics)")
    print("Try:\n")
    print(
        f"  curl -s {url}/v1/models/diffusion/generate -H 'content-type: application/json' \\\n    -d '{json.dumps(EXAMPLE)}'"
    )
    print(
        "\nor decode the first image to a file:\n\n"
        f"  curl -s {url}/v1/models/diffusion/generate -H 'content-type: application/json' -d '{json.dumps(EXAMPLE)}' \\\n"
        "    | python3 -c 'import sys, json, base64; "
        'open("digit.png", "wb").write(base64.b64decode(json.load(sys.stdin)["images"][0]["image_base64"]))\'\n'
    )
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        import ray
        from ray import serve

        serve.shutdown()  # type: ignore[no-untyped-call]
        ray.shutdown()


if __name__ == "__main__":
    main()
