"""The gradio demo in a real browser: Debian's chromium (headless, driven by playwright) fills the form
of ``fastvideo/demo/gradio_web_demo.py`` served as a subprocess on the tiny model, and gets a
playable mp4 back; an invalid value gives a message in the page and the server carries on.

Needs ``chromium`` on PATH (``bash scripts/setup.sh`` installs Debian's package); without it the
browser tests fail saying how to install it, unless FASTVIDEO_SKIP_BROWSER=1 (then they skip).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import av
import pytest

from fastvideo.demo.gradio_web_demo import MAX_SEED, form_request

PROMPT = "a red circle moving right"
SMALL = {"frames": 13, "height": 32, "width": 48, "steps": 4}
GENERATION_TIMEOUT_MS = 120_000
# The <video> gradio renders once its source has loaded enough to show a frame (HAVE_CURRENT_DATA).
VIDEO_READY = """() => {
    const v = document.querySelector('#video video');
    return v && v.currentSrc && v.readyState >= 2 && v.duration > 0 ? v.currentSrc : null;
}"""


@dataclass
class DemoServer:
    url: str
    process: subprocess.Popen
    log: Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_serving(server: DemoServer, timeout_s: float = 300.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(f"the demo exited with {server.process.returncode}:\n{server.log.read_text()}")
        try:
            with urllib.request.urlopen(server.url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"the demo did not serve {server.url} within {timeout_s:.0f} s:\n{server.log.read_text()}")


@pytest.fixture(scope="session")
def chromium() -> str:
    if os.environ.get("FASTVIDEO_SKIP_BROWSER") == "1":
        pytest.skip("FASTVIDEO_SKIP_BROWSER=1")
    path = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").is_file() else None)
    if path is None:
        pytest.fail(
            "chromium is not on PATH: the demo test drives Debian's chromium. Install it with "
            "`sudo apt-get install -y --no-install-recommends chromium` (bash scripts/setup.sh does this), "
            "or set FASTVIDEO_SKIP_BROWSER=1 to skip the browser tests.",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="module")
def browser(chromium):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed: pip install -e '.[dev]' (never `playwright install`)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True)
        yield browser
        browser.close()


# What a test may serve (indirectly, by name): (model type, tiny model fixture).
SERVED = {"mochi": ("mochi", "tiny_mochi"), "wan": ("wan", "tiny_wan"), "wan-i2v": ("wan", "tiny_wan_i2v")}


@pytest.fixture(scope="module")
def demo_server(request, browser, repo_root, tmp_path_factory):
    """The demo serving a tiny model of SERVED (``mochi`` unless a test names another, indirectly)."""
    name = getattr(request, "param", "mochi")
    family, fixture = SERVED[name]
    model = request.getfixturevalue(fixture)
    folder = tmp_path_factory.mktemp(f"demo-{name}")
    cmd = [sys.executable, "fastvideo/demo/gradio_web_demo.py", "--model_type", family, "--model_path", str(model),
           "--port", str(free_port()), "--output_path", str(folder / "videos"),
           *(arg for name, value in SMALL.items() for arg in (f"--default_{name}", str(value)))]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(repo_root) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "GRADIO_ANALYTICS_ENABLED": "False",
           "GRADIO_TEMP_DIR": str(folder / "gradio")}  # fmt: skip
    log = folder / "server.log"
    with log.open("w") as out:
        process = subprocess.Popen(cmd, cwd=repo_root, env=env, stdout=out, stderr=subprocess.STDOUT)
    server = DemoServer(f"http://127.0.0.1:{cmd[cmd.index('--port') + 1]}/", process, log)
    try:
        wait_until_serving(server)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def page(browser, demo_server):
    page = browser.new_page()
    page.goto(demo_server.url)
    yield page
    page.close()


def generate(page, prompt: str = PROMPT, **fields) -> None:
    """Fill the prompt and ``fields`` (frames, height, width, steps, seed) by their labels, press Generate."""
    page.get_by_label("Prompt", exact=True).fill(prompt)
    for name, value in fields.items():
        page.get_by_label(re.compile(f"^{name}", re.IGNORECASE)).fill(str(value))
    page.get_by_role("button", name="Generate").click()


def video_frames(page, src: str, folder: Path) -> int:
    """Download the page's video through the browser's session and count the frames it decodes to."""
    response = page.request.get(src)
    assert response.ok, f"{src}: HTTP {response.status}"
    path = folder / "downloaded.mp4"
    path.write_bytes(response.body())
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


@pytest.mark.slow
@pytest.mark.parametrize("demo_server", ["mochi", "wan"], indirect=True)
def test_generate_shows_a_playable_video(page, tmp_path):
    from playwright.sync_api import expect

    generate(page)
    src = page.wait_for_function(VIDEO_READY, timeout=GENERATION_TIMEOUT_MS).json_value()
    assert video_frames(page, src, tmp_path) == SMALL["frames"]
    expect(page.locator("#status")).to_contain_text("4 steps")
    expect(page.locator("#status")).to_contain_text("13 frames at 32x48")


@pytest.mark.slow
def test_invalid_values_give_a_message_and_the_server_carries_on(page, demo_server, tmp_path):
    from playwright.sync_api import expect

    status = page.locator("#status")
    generate(page, frames=24)
    expect(status).to_contain_text("nearest valid values: 19 or 25", timeout=30_000)
    generate(page, prompt="  ", frames=13)
    expect(status).to_contain_text("enter a prompt", timeout=30_000)
    generate(page, height=40)
    expect(status).to_contain_text("multiples of 16", timeout=30_000)
    assert page.locator("#video video").count() == 0
    assert demo_server.process.poll() is None
    assert "Traceback" not in demo_server.log.read_text()

    page.get_by_label("Randomise seed").uncheck()
    generate(page, height=32, seed=7)
    src = page.wait_for_function(VIDEO_READY, timeout=GENERATION_TIMEOUT_MS).json_value()
    assert video_frames(page, src, tmp_path) == SMALL["frames"]
    expect(status).to_contain_text("Seed 7 ")
    assert "Traceback" not in demo_server.log.read_text()


@pytest.mark.slow
@pytest.mark.parametrize("demo_server", ["wan-i2v"], indirect=True)
def test_image_to_video_demo_asks_for_the_first_frame_and_uses_it(page, demo_server, tmp_path):
    import numpy as np
    from PIL import Image
    from playwright.sync_api import expect

    status = page.locator("#status")
    expect(page.get_by_text("fastvideo image-to-video")).to_be_visible()
    generate(page)
    expect(status).to_contain_text("give the first frame", timeout=30_000)
    image = tmp_path / "first.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 48, 3), dtype=np.uint8)).save(image)
    page.locator("#first-frame input[type=file]").set_input_files(str(image))
    expect(page.locator("#first-frame img")).to_be_visible(timeout=30_000)
    generate(page)
    src = page.wait_for_function(VIDEO_READY, timeout=GENERATION_TIMEOUT_MS).json_value()
    assert video_frames(page, src, tmp_path) == SMALL["frames"]
    assert "Traceback" not in demo_server.log.read_text()


def test_form_values_become_a_request():
    request = form_request(f" {PROMPT} ", "", 7, False, 0, 13, 32, 48, 4, "euler")
    assert (request.prompt, request.seed, request.guidance_scale, request.num_frames) == (PROMPT, 7, None, 13)
    assert form_request(PROMPT, "blurry", 7, False, 3, 13, 32, 48, 4, "auto").guidance_scale == 3.0
    assert 0 <= form_request(PROMPT, "", 7, True, 0, 13, 32, 48, 4, "auto").seed <= MAX_SEED
    with pytest.raises(ValueError, match="enter a prompt"):
        form_request("", "", 7, False, 0, 13, 32, 48, 4, "auto")
    with pytest.raises(ValueError, match="enter a number for frames, steps"):
        form_request(PROMPT, "", 7, False, 0, None, 32, 48, None, "auto")
    with pytest.raises(ValueError, match="seed must be between"):
        form_request(PROMPT, "", -1, False, 0, 13, 32, 48, 4, "auto")
