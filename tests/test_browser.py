"""The web page in headless Chromium (Debian's chromium driven by Playwright): upload, submit, check what renders.

CI installs chromium (.ci/run); there a missing browser fails this test instead of skipping it.
"""

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pydicom.data import get_testdata_file

from qoqmed.data.readers import load_ecg
from qoqmed.infer import QoQMedPipeline
from qoqmed.modeling.tiny import build_tiny
from qoqmed.serve import create_app
from test_serve import ServerThread

CT = get_testdata_file("CT_small.dcm")
ECG_DCM = get_testdata_file("waveform_ecg.dcm")


def chromium_path() -> str | None:
    found = os.environ.get("QOQMED_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and os.environ.get("CI"):
        pytest.fail("chromium is not installed; .ci/run installs it (apt-get install chromium)")
    return found


@pytest.fixture(scope="module")
def page_server():
    """A tiny model whose generate writes a fixed answer with one box, so the page has boxes to draw."""
    processor, model = build_tiny(seed=0)
    pipe = QoQMedPipeline(model, processor, max_new_tokens=64, name="tiny-scripted")
    mw, mh = processor.model_image_size(128, 128)  # CT_small is 128 x 128
    answer = ('<think>```json\n[{"bbox_2d": [%d, %d, %d, %d], "label": "air"}]\n```\nFree air at the apex.</think>\n'
              '\\boxed{Pneumothorax}' % (mw // 4, mh // 4, mw // 2, mh // 2))
    tok = processor.tokenizer
    ids = torch.tensor(tok(answer, add_special_tokens=False)["input_ids"] + [tok.convert_tokens_to_ids("<|im_end|>")])
    model.generate = lambda input_ids, **kw: torch.cat([input_ids, ids.repeat(input_ids.shape[0], 1)], dim=1)
    with ServerThread(create_app(pipe)) as srv:
        srv.box = [v * 128 / s for v, s in zip((mw // 4, mh // 4, mw // 2, mh // 2), (mw, mh, mw, mh))]
        yield srv


@pytest.fixture(scope="module")
def browser():
    exe = chromium_path()
    if exe is None:
        pytest.skip("no chromium on this machine (apt-get install chromium); CI installs it")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


def test_upload_submit_and_render(browser, page_server, tmp_path):
    np.save(tmp_path / "ecg.npy", load_ecg(ECG_DCM))
    page = browser.new_page(viewport={"width": 1100, "height": 1600})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(page_server.url + "/")
    page.wait_for_function("document.getElementById('model-name').textContent.includes('tiny-scripted')")
    page.fill("#question", "Which findings are present?")
    page.set_input_files("#images", CT)
    page.set_input_files("#ecg", str(tmp_path / "ecg.npy"))
    page.fill("#ehr", "Sudden dyspnoea.")
    page.click("#submit")
    page.wait_for_selector("#result[data-state=done]", timeout=60_000)

    assert page.inner_text("#diagnosis") == "Pneumothorax"
    assert page.inner_text("#labels") == "Pneumothorax"
    assert "Free air at the apex." in page.inner_text("#reasoning")
    page.wait_for_selector("#image-canvas[data-ready='1']")
    assert page.get_attribute("#image-canvas", "data-boxes") == "1"
    assert "1 box on images[0]" in page.inner_text("#box-count")
    assert page.get_attribute("#ecg-canvas", "data-leads") == "8"
    # The box outline is drawn where the box is: sample the canvas on the middle of its left edge.
    x1, y1, x2, y2 = page_server.box
    rgba = page.evaluate(
        """([x, y]) => { const c = document.getElementById('image-canvas');
             const s = c.width / 128; return Array.from(c.getContext('2d').getImageData(
             Math.round(x * s), Math.round(y * s), 1, 1).data); }""", [x1, (y1 + y2) / 2])
    assert rgba[:3] == [0xE6, 0x9F, 0x00]
    # The ECG trace is drawn (dark pixels on the light paper background).
    dark = page.evaluate("""() => { const c = document.getElementById('ecg-canvas');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;
        for (let i = 0; i < d.length; i += 4) if (d[i] < 80 && d[i + 1] < 80) n++; return n; }""")
    assert dark > 2000

    shot = Path(os.environ.get("QOQMED_SCREENSHOT_DIR", tmp_path)) / "page.png"
    page.screenshot(path=str(shot), full_page=True)
    img = np.asarray(Image.open(shot).convert("RGB"))
    assert img.shape[0] > 800 and img.std() > 20  # a rendered page, not a blank one
    assert errors == []
    page.close()


def test_bad_upload_shows_the_error(browser, page_server, tmp_path):
    bad = tmp_path / "scan.png"
    bad.write_text("this is not an image")
    page = browser.new_page()
    page.goto(page_server.url + "/")
    page.fill("#question", "Findings?")
    page.set_input_files("#images", str(bad))
    page.click("#submit")
    page.wait_for_selector("#result[data-state=error]", state="attached", timeout=30_000)
    status = page.inner_text("#status")
    assert "images[0]" in status and "not a recognised image format" in status and "HTTP 400" in status
    assert page.get_attribute("#status", "class") == "error"
    page.close()
