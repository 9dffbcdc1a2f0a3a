"""The playground page in a real browser (Debian's chromium, headless, driven by playwright)
against real Ray Serve: images render with the pixels the API gives, previews stream in, two
samplers side by side, a drawn digit gets p(label | drawing) and is re-imagined and inpainted,
and a bad token is explained in words.

Screenshots go to $GENSERVE_SCREENSHOTS_DIR (`make screenshots` points it at docs/figures, so the
pictures in the docs are this test's), else to a temporary folder."""

from __future__ import annotations

import base64
import io
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from genserve_client import Client
from PIL import Image

from tests.integration.conftest import Server

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# A closed network: no background fetches, no update checks (they would be refused, noisily).
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]  # fmt: skip


@pytest.fixture(scope="module")
def page(server: Server) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        page.set_default_timeout(120_000)
        page.goto(f"{server.url}/playground")
        page.wait_for_function("document.getElementById('status').textContent.endsWith('models')")
        yield page
        browser.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = os.environ.get("GENSERVE_SCREENSHOTS_DIR")
    return Path(folder) if folder else tmp_path_factory.mktemp("screenshots")


def decode(src: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))))


def final_images(page: Any, panel: str) -> list[str]:
    srcs: list[str] = page.eval_on_selector_all(
        f"#{panel} .images img", "els => els.map(e => e.dataset.final ? e.src : '')"
    )
    assert all(srcs), srcs
    return srcs


def rendered_pixels(page: Any, panel: str) -> list[list[int]]:
    """Each image as the browser decoded it: drawn onto a canvas and read back (red channel)."""
    return page.eval_on_selector_all(  # type: ignore[no-any-return]
        f"#{panel} .images img",
        """els => els.map(img => {
            const c = document.createElement('canvas'); c.width = img.naturalWidth; c.height = img.naturalHeight;
            const ctx = c.getContext('2d'); ctx.drawImage(img, 0, 0);
            return Array.from(ctx.getImageData(0, 0, c.width, c.height).data.filter((_, i) => i % 4 === 0));
        })""",
    )


def test_generate_streams_previews_and_renders_the_apis_pixels(page: Any, server: Server, shots: Path) -> None:
    page.select_option("#model", "diffusion")
    page.select_option("#label", "3")
    page.fill("#n", "4")
    page.fill("#seed", "42")
    page.select_option("#sampler-a", "dpmpp_2m")
    page.fill("#steps-a", "20")
    page.evaluate(
        """() => { window.previewSrcs = new Set();
        new MutationObserver(ms => ms.forEach(m => { if (!m.target.dataset.final) window.previewSrcs.add(m.target.src); }))
          .observe(document.getElementById('panel-a'), {subtree: true, attributes: true, attributeFilter: ['src']}); }"""
    )
    page.click("#generate")
    page.wait_for_selector("#panel-a[data-state=done]")
    srcs = final_images(page, "panel-a")
    with Client(server.url) as client:
        expected = client.generate("diffusion", n=4, label=3, seed=42, steps=20, sampler="dpmpp_2m", guidance=1.0)
    assert [base64.b64decode(s.split(",", 1)[1]) for s in srcs] == expected.files
    shown = np.array(rendered_pixels(page, "panel-a"), dtype=np.uint8).reshape(4, 28, 28)
    assert np.array_equal(shown, expected.arrays()[..., 0])  # the browser drew the same pixels
    assert shown.max() > 200 and shown.min() < 30  # a digit, not a blank
    assert page.evaluate("window.previewSrcs.size") >= 2  # images formed step by step
    assert "server" in page.inner_text("#panel-a .timing") and page.inner_text("#panel-a .error") == ""


def test_two_samplers_side_by_side_share_the_seed(page: Any, server: Server, shots: Path) -> None:
    page.check("#compare")
    page.select_option("#sampler-b", "ddim")
    page.fill("#steps-b", "10")
    page.click("#generate")
    page.wait_for_selector("#panel-a[data-state=done]")
    page.wait_for_selector("#panel-b[data-state=done]")
    with Client(server.url) as client:
        ddim = client.generate("diffusion", n=4, label=3, seed=42, steps=10, sampler="ddim", guidance=1.0)
    assert np.array_equal(np.stack([decode(s) for s in final_images(page, "panel-b")]), ddim.arrays()[..., 0])
    assert page.inner_text("#panel-b h3") == "ddim, 10 steps, seed 42"
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(shots / "playground.png"))
    page.uncheck("#compare")


def test_a_prompt_draws_emoji_with_the_apis_pixels(page: Any, server: Server, shots: Path) -> None:
    page.select_option("#model", "emoji-text")
    assert page.is_hidden("#label") and page.is_visible("#prompt"), "a text model takes a prompt, not a label"
    guidance = float(page.input_value("#guidance"))
    page.fill("#prompt", "red apple")
    page.fill("#n", "4")
    page.fill("#seed", "7")
    page.select_option("#sampler-a", "dpmpp_2m")
    page.fill("#steps-a", "20")
    page.click("#generate")
    page.wait_for_selector("#panel-a[data-state=done]")
    with Client(server.url) as client:
        assert guidance == client.model("emoji-text").text["default_guidance"], "the card's default guidance"
        expected = client.generate("emoji-text", prompt="red apple", n=4, seed=7, steps=20, sampler="dpmpp_2m",
                                   guidance=guidance)  # fmt: skip
    shown = np.stack([decode(s) for s in final_images(page, "panel-a")])
    assert shown.shape == (4, 32, 32, 3) and np.array_equal(shown, expected.arrays())
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(shots / "playground-text.png"))
    page.select_option("#model", "diffusion")
    assert page.is_visible("#label") and page.is_hidden("#prompt")


def draw(page: Any, points: list[tuple[float, float]]) -> None:
    box = page.locator("#pad").bounding_box()
    page.mouse.move(box["x"] + points[0][0] * box["width"], box["y"] + points[0][1] * box["height"])
    page.mouse.down()
    for x, y in points[1:]:
        page.mouse.move(box["x"] + x * box["width"], box["y"] + y * box["height"], steps=8)
    page.mouse.up()


def test_a_drawn_digit_is_classified_reimagined_and_inpainted(page: Any, shots: Path) -> None:
    page.click("#clear")
    page.select_option("#pen", "digit")
    draw(page, [(0.5, 0.18), (0.5, 0.82)])  # a one
    page.wait_for_selector("#bars .p.top")
    probabilities = page.eval_on_selector_all(
        "#bars .p", "els => els.map(e => [e.dataset.label, Number(e.textContent)])"
    )
    assert len(probabilities) == 10 and sum(p for _, p in probabilities) == pytest.approx(1.0, abs=0.01)
    assert page.get_attribute("#bars .p.top", "data-label") == max(probabilities, key=lambda lp: lp[1])[0]
    assert page.inner_text("#classify-timing").startswith("p(label | drawing) by vae: 1")

    page.fill("#strength", "0.6")
    page.click("#reimagine")
    page.wait_for_selector("#panel-edit[data-state=done]")
    assert len(final_images(page, "panel-edit")) == 4

    page.select_option("#pen", "mask")
    draw(page, [(0.2, 0.15), (0.8, 0.15)])  # regenerate a band across the top
    with page.expect_request("**/inpaint") as sent:
        page.click("#inpaint")
    page.wait_for_selector("#panel-edit[data-state=done]")
    body = sent.value.post_data_json
    image = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["image"]))).convert("L"))
    mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["mask"]))).convert("L")) >= 128
    assert 0 < mask.sum() < mask.size / 2
    for src in final_images(page, "panel-edit"):
        assert np.array_equal(decode(src)[~mask], image[~mask])  # outside the mask: the drawing, exactly
    page.locator("section", has=page.locator("#pad")).screenshot(path=str(shots / "playground-canvas.png"))


def test_a_bad_token_is_explained_and_a_good_one_connects(page: Any, server: Server) -> None:
    with server.auth_on() as key:
        page.fill("#token", "not-the-key")
        page.click("#connect")
        page.wait_for_function("document.getElementById('global-error').textContent.length > 0")
        assert page.inner_text("#global-error").startswith("Unauthorized: this server needs a valid token.")
        page.fill("#token", key)
        page.click("#connect")
        page.wait_for_function("document.getElementById('status').textContent.endsWith('models')")
        assert page.inner_text("#global-error") == ""
        page.fill("#steps-a", "5000")
        page.click("#generate")
        page.wait_for_selector("#panel-a[data-state=error]")
        assert "steps" in page.inner_text("#panel-a .error") and "1000" in page.inner_text("#panel-a .error")
    page.fill("#token", "")
