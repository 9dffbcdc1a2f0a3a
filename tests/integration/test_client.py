"""The client package and its command line against real Ray Serve and the shipped models: the
same pixels as plain HTTP, streams, scoring and editing, typed errors, the bearer token, and
the CLI's files (real PNGs of the card's shape)."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from genserve_client import AsyncClient, Client, Done, GenserveError, ImageReady, Preview, Progress
from genserve_client._api import Accepted
from genserve_client.cli import main
from PIL import Image

from tests.integration.conftest import Server

pytestmark = pytest.mark.integration


def test_the_client_gets_the_same_pixels_as_plain_http(server: Server) -> None:
    body = {"n": 2, "label": 3, "steps": 10, "seed": 7}
    plain = requests.post(f"{server.url}/v1/models/diffusion/generate", json=body, timeout=120).json()
    with Client(server.url) as client:
        result = client.generate("diffusion", n=2, label=3, steps=10, seed=7)
        webp = client.generate("gan", n=1, seed=2, output_format="webp", quality=90, grid=True)
    assert result.files == [base64.b64decode(im["image_base64"]) for im in plain["images"]]
    assert result.arrays().shape == (2, 28, 28, 1) and result.seed == 7 and result.timings.total_seconds > 0
    assert webp.output_format == "webp" and webp.images[0].format == "WEBP" and webp.grid is not None


def test_the_async_client_lists_models_and_streams_the_same_images(server: Server) -> None:
    async def run() -> tuple[Any, list[Any], Any]:
        async with AsyncClient(server.url) as client:
            models = await client.models()
            events = [e async for e in client.generate_stream("diffusion", n=1, steps=20, seed=3, preview_every=5)]
            plain = await client.generate("diffusion", n=1, steps=20, seed=3)
            return models, events, plain

    models, events, plain = asyncio.run(run())
    assert {m.name for m in models} >= {"gan", "vae", "diffusion"}
    diffusion = next(m for m in models if m.name == "diffusion")
    assert diffusion.family == "diffusion" and diffusion.image_shape == (1, 28, 28) and diffusion.quality
    assert isinstance(events[0], Accepted) and events[0].seed == 3 and isinstance(events[-1], Done)
    assert [e.step for e in events if isinstance(e, Progress)] == list(range(1, 21))
    assert [e.step for e in events if isinstance(e, Preview)] == [5, 10, 15]
    assert [e.file for e in events if isinstance(e, ImageReady)] == plain.files


def test_the_client_scores_classifies_edits_and_interpolates(server: Server) -> None:
    with Client(server.url) as client:
        digits = client.generate("vae", n=3, label=4, seed=8)
        scores = client.score("vae", digits.images, label=4, k=16)
        assert scores.iwae.shape == (3,) and np.all(np.isfinite(scores.iwae)) and np.all(scores.iwae_bits_per_dim > 0)
        classes = client.classify("vae", digits.arrays(), k=16)
        assert classes.probabilities.shape == (3, 10) and np.allclose(classes.probabilities.sum(axis=1), 1)
        assert classes.predicted == classes.probabilities.argmax(axis=1).tolist()
        assert classes.predicted_labels == [classes.labels[i] for i in classes.predicted]
        image = digits.arrays()[0]
        mask = np.zeros((28, 28), np.uint8)
        mask[:, 14:] = 255  # regenerate the right half
        inpainted = client.inpaint("diffusion", image, mask, label=4, steps=10, seed=1).arrays()[0]
        assert np.array_equal(inpainted[:, :14], image[:, :14])  # kept pixels come back as sent
        edited = client.img2img("diffusion", image, strength=0.5, label=4, steps=10, seed=1)
        assert edited.arrays().shape == (1, 28, 28, 1)
        frames = client.interpolate("gan", 5, 6, frames=4, label=2)
        first = client.generate("gan", n=1, seed=5, label=2)
        assert len(frames.files) == 4 and np.array_equal(frames.arrays()[0], first.arrays()[0])
        rebuilt = client.reconstruct("vae", digits.images[:1], label=4)
        assert rebuilt.arrays().shape == (1, 28, 28, 1)


def test_errors_are_typed_and_the_token_travels(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    with Client(server.url) as client, pytest.raises(GenserveError) as err:
        client.generate("diffusion", steps=5000)
    assert (err.value.status, err.value.code, err.value.field) == (422, "invalid_request", "steps")
    with server.auth_on() as key:
        with Client(server.url, token="not-the-key") as client, pytest.raises(GenserveError) as err:
            client.models()
        assert (err.value.status, err.value.code) == (401, "unauthorized")
        monkeypatch.setenv("GENSERVE_API_KEY", key)
        with Client(server.url) as client:
            assert client.generate("gan", n=1, seed=1).arrays().shape == (1, 28, 28, 1)


def run_cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(args), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def test_the_cli_writes_real_pngs_with_a_progress_bar_and_reads_them_back(server: Server, tmp_path: Path) -> None:
    code, out, err = run_cli(
        "generate", "diffusion", "-n", "3", "--label", "3", "--steps", "20", "--seed", "5",
        "--out", str(tmp_path), "--url", server.url,
    )  # fmt: skip
    assert code == 0, err
    files = sorted(tmp_path.glob("diffusion-5-*.png"))
    assert [f.name for f in files] == ["diffusion-5-0.png", "diffusion-5-1.png", "diffusion-5-2.png"]
    assert out.splitlines()[:3] == [str(f) for f in files]
    assert "step 2/20" in err and err.strip().endswith("step 20/20")  # fed by the stream
    with Client(server.url) as client:
        same = client.generate("diffusion", n=3, label=3, steps=20, seed=5).files
    for f, expected in zip(files, same, strict=True):
        image = Image.open(f)
        assert (image.format, image.mode, image.size) == ("PNG", "L", (28, 28))
        assert f.read_bytes() == expected

    code, out, err = run_cli("classify", "vae", *map(str, files), "-k", "16", "--url", server.url)
    assert code == 0, err
    assert [line.split(":")[0] for line in out.splitlines()] == [str(f) for f in files]

    code, out, err = run_cli(
        "generate", "gan", "-n", "6", "--grid", "--seed", "4", "--out", str(tmp_path), "--url", server.url
    )
    assert code == 0, err
    grid = Image.open(tmp_path / "gan-4-grid.png")
    assert grid.size == (2 + 6 * 30, 2 + 30)


def test_the_cli_lists_models_and_reports_refusals_in_words(server: Server, tmp_path: Path) -> None:
    code, out, _ = run_cli("models", "--url", server.url)
    assert code == 0 and all(f"\n{name} (" in "\n" + out for name in ("gan", "vae", "diffusion"))
    assert "fid" in out
    code, _, err = run_cli("generate", "diffusion", "--steps", "5000", "--out", str(tmp_path), "--url", server.url)
    assert code == 1 and "422 invalid_request" in err and "steps" in err
    code, _, err = run_cli("generate", "diffusion", "--label", "eleven", "--out", str(tmp_path), "--url", server.url)
    assert code == 2 and "no label 'eleven'" in err
    with server.auth_on():
        code, _, err = run_cli("models", "--url", server.url, "--token", "wrong")
    assert code == 1 and "401 unauthorized" in err


def test_the_installed_command_runs(server: Server, tmp_path: Path) -> None:
    command = Path(sys.executable).parent / "genserve-client"
    done = subprocess.run(
        [str(command), "generate", "vae", "-n", "2", "--seed", "3", "--format", "jpeg", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=120, env={"GENSERVE_URL": server.url, "PATH": ""},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vae-3-0.jpg", "vae-3-1.jpg"]
    assert Image.open(tmp_path / "vae-3-0.jpg").format == "JPEG"


def test_the_cli_scores_and_edits_image_files(server: Server, tmp_path: Path) -> None:
    with Client(server.url) as client:
        digit = tmp_path / "digit.png"
        digit.write_bytes(client.generate("vae", n=1, label=7, seed=2).files[0])
    code, out, err = run_cli("score", "vae", str(digit), "--label", "7", "-k", "16", "--json", "--url", server.url)
    assert code == 0, err
    (row,) = json.loads(out)
    assert row["file"] == str(digit) and row["iwae"] < 0 and row["iwae_bits_per_dim"] > 0
    edits = tmp_path / "edits"
    code, out, err = run_cli(
        "edit", "diffusion", str(digit), "--label", "1", "--strength", "0.5", "--steps", "10", "-n", "2",
        "--seed", "3", "--out", str(edits), "--url", server.url,
    )  # fmt: skip
    assert code == 0, err
    assert sorted(p.name for p in edits.iterdir()) == ["diffusion-3-0.png", "diffusion-3-1.png"]
    mask = tmp_path / "mask.png"
    pixels = np.zeros((28, 28), np.uint8)
    pixels[:, :14] = 255  # regenerate the left half
    Image.fromarray(pixels).save(mask)
    code, out, err = run_cli(
        "edit", "diffusion", str(digit), "--mask", str(mask), "--steps", "10", "--seed", "4", "--prefix", "inpainted",
        "--out", str(edits), "--url", server.url,
    )  # fmt: skip
    assert code == 0, err
    kept = np.asarray(Image.open(edits / "inpainted-4-0.png"))[:, 14:]
    assert np.array_equal(kept, np.asarray(Image.open(digit))[:, 14:])  # the unmasked half comes back as sent
