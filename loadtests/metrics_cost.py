"""What one `ray.util.metrics` record costs its caller, alone and beside a thread encoding PNGs.

Ray's record call leaves the GIL for its C++ side and must take it back; while another thread
runs Python (on a replica: PNG encoding, batching), taking it back waits for that thread to let
go, up to a switch interval. That wait is why `deployments.metrics.Recorder` keeps records in
Python and hands them to Ray from a thread of its own. About 30 s here (Ray's start-up).

    python -m loadtests.metrics_cost
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from deployments.loopback import keep_ray_on_loopback

keep_ray_on_loopback()  # before ray is imported

RECORDS = 500


def measure() -> dict[str, float]:
    """Microseconds per call in a Ray worker: a Ray counter record, and `Recorder.inc` (what a
    replica calls instead), each alone and with a second thread spinning in Python."""
    import threading

    from ray.util import metrics

    from deployments.metrics import Recorder
    from service.images import encode_pngs
    from service.metrics import IMAGES

    images = np.random.default_rng(0).uniform(-1, 1, (8, 1, 28, 28)).astype(np.float32)
    tags = {"model": "gan", "family": "gan"}
    counter = metrics.Counter(IMAGES.name, description=IMAGES.description, tag_keys=IMAGES.labels)
    recorder = Recorder([IMAGES], flush_s=3600.0, make=lambda spec: counter)

    def record() -> None:
        counter.inc(1, tags=tags)

    def keep() -> None:
        recorder.inc(IMAGES, 1, tags)

    out: dict[str, float] = {}
    for busy in (False, True):
        stop = threading.Event()
        spinner = None
        if busy:

            def spin(stop: threading.Event = stop) -> None:
                while not stop.is_set():  # what a replica's batch thread does between network calls
                    encode_pngs(images, (-1.0, 1.0))

            spinner = threading.Thread(target=spin, daemon=True)
            spinner.start()
        for name, fn in (("ray record", record), ("Recorder.inc", keep)):
            fn()
            t0 = time.perf_counter()
            for _ in range(RECORDS):
                fn()
            out[f"{name}, {'beside a thread encoding PNGs' if busy else 'alone'}"] = (
                (time.perf_counter() - t0) / RECORDS * 1e6
            )
        stop.set()
        if spinner is not None:
            spinner.join()
    return out


def main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    import logging

    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR)
    try:
        figures: dict[str, float] = ray.get(ray.remote(measure).remote())
    finally:
        ray.shutdown()
    print("| call | us per call |\n|---|---:|")
    for name, us in figures.items():
        print(f"| {name} | {us:.1f} |")


if __name__ == "__main__":
    main()
