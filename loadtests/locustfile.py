"""Locust scenarios against a running genserve (`make serve`): one user class per family and a
mixed diffusion workload (mixed step counts and samplers).

    locust -f loadtests/locustfile.py --host http://127.0.0.1:8000 --headless -u 16 -r 4 -t 60s \
        --csv docs/loadtest GanUser DiffusionMixedUser

`make loadtest` runs a short headless mix and writes CSV files under loadtests/results/.
"""

from __future__ import annotations

import os
import random

from locust import HttpUser, between, task

HEADERS = {"Authorization": f"Bearer {os.environ['GENSERVE_API_KEY']}"} if os.environ.get("GENSERVE_API_KEY") else {}


class _GenserveUser(HttpUser):
    abstract = True
    wait_time = between(0.05, 0.2)

    def generate(self, model: str, body: dict[str, object], name: str) -> None:
        with self.client.post(
            f"/v1/models/{model}/generate", json=body, headers=HEADERS, name=name, catch_response=True
        ) as r:
            if r.status_code == 200 and len(r.json()["images"]) == body.get("n", 1):
                r.success()
            elif r.status_code == 503:
                r.failure("overloaded (503)")
            else:
                r.failure(f"{r.status_code}: {r.text[:200]}")


class GanUser(_GenserveUser):
    @task
    def digits(self) -> None:
        self.generate("gan", {"n": 4, "label": random.randrange(10), "seed": random.randrange(2**31)}, "gan n=4")


class VaeUser(_GenserveUser):
    @task
    def digits(self) -> None:
        self.generate("vae", {"n": 4, "label": random.randrange(10), "seed": random.randrange(2**31)}, "vae n=4")


class DiffusionUser(_GenserveUser):
    @task
    def fast(self) -> None:
        body = {"n": 2, "label": random.randrange(10), "steps": 20, "sampler": "dpmpp_2m", "guidance": 1.5}
        self.generate("diffusion", body, "diffusion dpmpp_2m 20")


class DiffusionMixedUser(_GenserveUser):
    """Mixed step counts (10, 20, 50, 200) and samplers sharing one diffusion replica."""

    @task(4)
    def ten(self) -> None:
        self.generate(
            "diffusion", {"n": 1, "steps": 10, "sampler": "dpmpp_2m", "label": random.randrange(10)}, "diffusion 10"
        )

    @task(3)
    def twenty(self) -> None:
        self.generate(
            "diffusion", {"n": 1, "steps": 20, "sampler": "ddim", "label": random.randrange(10)}, "diffusion 20"
        )

    @task(2)
    def fifty(self) -> None:
        self.generate("diffusion", {"n": 1, "steps": 50, "sampler": "ddim", "eta": 0.5}, "diffusion 50")

    @task(1)
    def two_hundred(self) -> None:
        self.generate("diffusion", {"n": 1, "steps": 200, "sampler": "ddpm"}, "diffusion 200")
