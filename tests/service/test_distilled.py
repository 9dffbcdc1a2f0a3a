"""The shipped distilled model: its card limits requests, and lanes carry their step count into the network."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from service.cards import load_card
from service.errors import ModelLoadError
from service.jobs import DiffusionJob
from service.noise import image_rng
from service.registry import LoadedModel, load_model
from service.samplers import make_plan
from service.scheduler import StepScheduler
from service.schemas import DiffusionGenerateRequest, ModelInfo
from service.settings import Limits

SHIPPED = Path(__file__).resolve().parents[2] / "exported" / "distilled"


@pytest.fixture(scope="module")
def model() -> LoadedModel:
    return load_model(SHIPPED, device="cpu")


def _validate(body: dict[str, object], model: LoadedModel) -> DiffusionGenerateRequest:
    """As the HTTP edge parses a body (deployments/http.py:parse_request)."""
    return DiffusionGenerateRequest.model_validate_json(
        json.dumps(body), strict=True, context={"card": model.card, "limits": Limits()}
    )


def test_requests_default_to_the_cards_sampler_and_steps_and_refuse_others(model: LoadedModel) -> None:
    req = _validate({"n": 2, "label": 3}, model)
    assert (req.steps, req.sampler) == (4, "ddim")
    assert _validate({"steps": 1}, model).steps == 1
    for body, field, words in (
        ({"steps": 3}, "steps", "1, 2, 4 steps only"),
        ({"steps": 20}, "steps", "1, 2, 4 steps only"),
        ({"sampler": "dpmpp_2m"}, "sampler", "sampler(s) ddim only"),
    ):
        with pytest.raises(ValidationError) as e:
            _validate(body, model)
        (err,) = e.value.errors()
        assert err["loc"] == (field,) and words in err["msg"]


def test_model_info_lists_the_supported_steps(model: LoadedModel) -> None:
    info = ModelInfo.from_card(model.card, Limits())
    assert info.samplers == ["ddim"] and info.steps == [1, 2, 4]


def test_a_step_conditioned_graph_needs_sampling_in_its_card(tmp_path: Path) -> None:
    card = json.loads((SHIPPED / "model.json").read_text())
    del card["sampling"]
    (tmp_path / "distilled").mkdir()
    (tmp_path / "distilled" / "model.json").write_text(json.dumps(card))
    with pytest.raises(ModelLoadError, match="needs `sampling` to list its steps"):
        load_card(tmp_path / "distilled")


def _by_hand(model: LoadedModel, job: DiffusionJob) -> np.ndarray:
    """Plain DDIM on the ONNX graph with every row's step count fed: what the scheduler must equal."""
    assert model.alphas_cumprod is not None and job.label is not None
    plan = make_plan("ddim", job.steps, model.alphas_cumprod)
    x = np.stack([image_rng(job.seed, i).standard_normal((1, 28, 28)).astype(np.float32) for i in range(job.n)])
    for s, t in enumerate(plan.timesteps):
        feeds = {
            "x": x,
            "t": np.full(job.n, t, np.float32),
            "label": np.full(job.n, job.label, np.int64),
            "k": np.full(job.n, job.steps, np.int64),
        }
        v = model.onnx.run("out", feeds)
        x0 = plan.alpha[s] * x - plan.sigma[s] * v
        x = (plan.a[s] * x + plan.b[s] * x0).astype(np.float32)
    return x


def test_lanes_with_1_2_and_4_steps_share_calls_and_each_gets_its_own_step_count(model: LoadedModel) -> None:
    jobs = [DiffusionJob(seed=s, n=2, steps=k, sampler="ddim", label=s) for s, k in ((1, 1), (2, 2), (3, 4))]

    async def together() -> list[np.ndarray]:
        sched = StepScheduler(model, max_batch=64)
        try:
            return [r.images for r in await asyncio.gather(*(sched.submit(j) for j in jobs))]
        finally:
            await sched.close()

    results = asyncio.run(together())
    for job, images in zip(jobs, results, strict=True):
        np.testing.assert_allclose(images, _by_hand(model, job), atol=1e-4)
    # The step count is an input that matters: the same noise at t = 999 gives another output for k = 1 and 4.
    feeds = {"x": np.zeros((1, 1, 28, 28), np.float32), "t": np.array([999.0], np.float32), "label": np.array([1])}
    one, four = (model.onnx.run("out", {**feeds, "k": np.array([k])}) for k in (1, 4))
    assert np.abs(one - four).max() > 1e-2
