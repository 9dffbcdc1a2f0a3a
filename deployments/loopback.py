"""Single-machine mode: every port Ray opens (metrics export, raylet, GCS, dashboard agent) on loopback.

Ray binds those ports to its node address, and `ray.init` turns `127.0.0.1` into the machine's
reachable address. With Ray's cluster mode off (`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`, which Ray
reads once, when it is first imported) the node address is 127.0.0.1. `make serve`, the tests,
`make bench` and `make chaos` call `keep_ray_on_loopback()` before anything imports ray; a real
cluster (serve deploy, compose, KubeRay) never does. This module must not import ray.
"""

from __future__ import annotations

import os
import sys

LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def keep_ray_on_loopback() -> None:
    """Sets Ray's single-machine switch (unless the environment already says otherwise)."""
    missing = {key: value for key, value in LOOPBACK_ENV.items() if key not in os.environ}
    if missing and "ray" in sys.modules:
        raise RuntimeError("keep_ray_on_loopback() must run before ray is imported: Ray reads the switch at import")
    os.environ.update(missing)
