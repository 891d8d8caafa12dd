"""The /ui page in headless Chromium (selenium + chromedriver) against the app served by uvicorn in a
thread (EngineBackend over a tiny bundle, no Ray): submit a text, check from the DOM that the head
grid and the attention map were drawn, click heads, take a screenshot.

Needs Debian's `chromium` and `chromium-driver` (`make system-deps`); skips where they are missing.
The screenshot goes to $DIHS_UI_SCREENSHOT if set, else to the test's tmp folder.
"""

import json
import os
import shutil
import socket
import threading
import time
import urllib.request

import pytest

from tests.test_explain import PNG, tiny_bundle

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
webdriver = pytest.importorskip(
    "selenium.webdriver", reason="selenium is not installed (pip install -e '.[dev]')"
)
if not (CHROMIUM and CHROMEDRIVER):
    pytest.skip(
        "Chromium or chromedriver not found: apt-get install chromium chromium-driver (make system-deps)",
        allow_module_level=True,
    )

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402


@pytest.fixture
def server(tiny_checkpoint):
    import uvicorn

    from service.backend import EngineBackend
    from service.engine import Engine
    from service.http import build_http_app
    from service.load import LoadConfig, LoadTracker
    from service.metrics import NullMetrics
    from service.settings import Settings

    metrics = NullMetrics()
    engine = Engine(
        tiny_bundle(tiny_checkpoint), "tiny", LoadTracker(LoadConfig(slo_s=0.25, queue_capacity=32)), metrics
    )
    app = build_http_app(Settings(model_name="tiny"), EngineBackend(engine, "tiny"), metrics)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # a free port, held from here on: no race with other processes
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}", engine
    srv.should_exit = True
    thread.join(10)
    sock.close()


@pytest.fixture
def browser(tmp_path):
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1280,1200",
        f"--user-data-dir={tmp_path / 'profile'}",
    ):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def _classify(base: str, text: str, budget: dict) -> dict:
    req = urllib.request.Request(
        f"{base}/v1/classify",
        data=json.dumps({"text": text, "budget": budget}).encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())["results"][0]


def _painted_pixels(driver) -> int:
    return driver.execute_script(
        "const c = document.getElementById('attention');"
        "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        "let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n;"
    )


def test_ui_draws_the_grid_and_attention_maps(server, browser, tmp_path):
    base, engine = server
    text = "the plot was bad and dull"
    browser.get(f"{base}/ui")
    area = browser.find_element(By.ID, "text")
    area.clear()
    area.send_keys(text)
    Select(browser.find_element(By.ID, "mode")).select_by_visible_text("fixed")
    ratio = browser.find_element(By.ID, "max")
    ratio.clear()
    ratio.send_keys("0.5")
    browser.find_element(By.ID, "go").click()

    grid, canvas = browser.find_element(By.ID, "grid"), browser.find_element(By.ID, "attention")
    wait = WebDriverWait(browser, 30)
    wait.until(
        lambda d: grid.get_attribute("data-drawn") == "true" and canvas.get_attribute("data-drawn") == "true"
    )

    served = _classify(base, text, {"mode": "fixed", "max_flops_ratio": 0.5})
    L, H = engine.model.shape.n_layers, engine.model.shape.n_heads
    cells = grid.find_elements(By.CSS_SELECTOR, "rect.cell")
    assert grid.get_attribute("data-cells") == str(L * H) == str(len(cells))
    active = [c for c in cells if c.get_attribute("data-active") == "true"]
    assert len(active) == served["heads"]["active"] == sum(served["heads"]["per_layer"])
    assert browser.find_element(By.ID, "label").text == served["label"]
    assert f"level {served['level']}" in browser.find_element(By.ID, "budget").text
    assert served["passes"][-1]["budget"] in browser.find_element(By.ID, "passes").text
    assert browser.find_element(By.ID, "reason").text == served["reason"]
    T = int(canvas.get_attribute("data-tokens"))
    assert T == 8 and _painted_pixels(browser) > T * T * 16  # every cell of the T x T map painted

    # click an active head in another layer: its map replaces the first one
    first = (canvas.get_attribute("data-layer"), canvas.get_attribute("data-head"))
    other = next(c for c in active if c.get_attribute("data-layer") != first[0])
    other.click()
    wait.until(
        lambda d: (
            (canvas.get_attribute("data-layer"), canvas.get_attribute("data-head"))
            == (other.get_attribute("data-layer"), other.get_attribute("data-head"))
        )
    )
    assert canvas.get_attribute("data-drawn") == "true" and "selected" in other.get_attribute("class")

    # a skipped head has no map, and the page says so
    skipped = next(c for c in cells if c.get_attribute("data-active") == "false")
    skipped.click()
    wait.until(lambda d: canvas.get_attribute("data-drawn") == "false")
    assert "skipped" in browser.find_element(By.ID, "att-title").text

    # colour by a global scorer: the grid is redrawn, same cells
    Select(browser.find_element(By.ID, "score")).select_by_value("fisher")
    assert "fisher" in browser.find_element(By.ID, "legend").text
    assert len(grid.find_elements(By.CSS_SELECTOR, "rect.cell")) == L * H

    other = next(
        c
        for c in grid.find_elements(By.CSS_SELECTOR, "rect.cell")
        if c.get_attribute("data-active") == "true"
    )
    other.click()
    wait.until(lambda d: canvas.get_attribute("data-drawn") == "true")
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors
    shot = os.environ.get("DIHS_UI_SCREENSHOT") or str(tmp_path / "ui.png")
    assert browser.save_screenshot(shot)
    with open(shot, "rb") as fh:
        assert fh.read(8) == PNG
    print(f"screenshot: {shot}")


def test_ui_shows_errors_in_the_page(server, browser):
    base, _ = server
    browser.get(f"{base}/ui")
    ratio = browser.find_element(By.ID, "max")
    ratio.clear()
    ratio.send_keys("0.05")
    browser.find_element(By.ID, "go").click()
    WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "error").text)
    assert "422" in browser.find_element(By.ID, "error").text
    assert "no budget level" in browser.find_element(By.ID, "error").text
    assert browser.find_element(By.ID, "grid").get_attribute("data-drawn") == "false"
