"""A real browser on a real TensorBoard: headless Chromium renders the memory charts of the finished smoke run.

Chromium and chromedriver come from the system's packages (`.ci/install-browser`: apt-get install chromium
chromium-driver); browsers downloaded at run time fail on these machines. Where neither can be installed the
test skips and says so. The screenshots are kept in the test's tmp dir (path printed with `-s`).
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
import urllib.parse

import numpy as np
import pytest
from PIL import Image

from tfodtrain.memory.traces import read_trace

MIB = float(1 << 20)
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1400,1000")

# Text of every element, shadow roots included (the Custom Scalars dashboard is Polymer: its DOM is in
# shadow roots), and the series lines its line charts (vz-line-chart2, Plottable SVG) drew.
DEEP_TEXT_JS = """
const out = {text: [], lines: 0};
function walk(node, host) {
  if (node.shadowRoot) walk(node.shadowRoot, node.tagName);
  for (const child of node.children || []) walk(child, host);
  if (node.tagName === 'STYLE' || node.tagName === 'SCRIPT') return;
  const classes = (node.getAttribute && node.getAttribute('class') || '').split(' ');
  if (node.tagName === 'path' && host === 'VZ-LINE-CHART2' && classes.includes('line')
      && (node.getAttribute('d') || '').length > 20) out.lines++;
  const text = node.childElementCount === 0 ? node.textContent.trim() : '';
  if (node.nodeType === 1 && text) out.text.push(text);
}
walk(document.documentElement, '');
return out;
"""


def find_browser() -> tuple[str, str]:
    chromium = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("browser test skipped: no Chromium/chromedriver on PATH and none could be installed here "
                    "(.ci/install-browser runs apt-get install -y chromium chromium-driver)")
    return chromium, driver


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver_path = find_browser()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    options.add_argument(f"--user-data-dir={profile}")
    # The distribution's chromedriver: Selenium Manager must not try to download one.
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(120)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def wait_for(condition, timeout: float = 90, every: float = 1.0):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(every)


CARDS_JS = """
const cards = {};
for (const card of document.querySelectorAll('scalar-card-component')) {
  const heading = card.querySelector('.heading .name');
  const chart = card.querySelector('line-chart');
  const swatch = card.querySelector('[style*="background"]');
  if (!heading || !chart) continue;
  const r = chart.getBoundingClientRect();
  cards[heading.textContent.replace(/\\s+/g, '')] = {
    rect: [r.x, r.y, r.width, r.height],
    color: swatch ? getComputedStyle(swatch).backgroundColor : null,  // the run's color in the data table
    table: (card.querySelector('tb-data-table, scalar-card-data-table') || {textContent: ''}).textContent};
}
return cards;
"""


def run_colored_pixels(screenshot: Image.Image, rect: list, css_color: str) -> int:
    """Pixels of the run's line color (or its anti-aliased blend with the white background) inside a chart's
    box: the series TensorBoard drew on its canvas. Gray axis text and grid lines do not count (a blend
    of white and the color has the same opacity in every channel; a gray has not)."""
    color = np.array([float(v) for v in re.findall(r"\d+", css_color)[:3]])
    x, y, w, h = (int(v) for v in rect)
    box = np.asarray(screenshot.convert("RGB"))[y:y + h, x:x + w].astype(float)
    opacity = (255.0 - box) / np.maximum(255.0 - color, 1.0)
    return int(((opacity.min(axis=2) > 0.5) & (np.ptp(opacity, axis=2) < 0.12)).sum())


@pytest.mark.slow
def test_time_series_page_renders_the_memory_charts(browser, tensorboard_url, smoke_run, tmp_path):
    rows = list(read_trace(smoke_run / "memory_trace_host.csv"))
    # TensorBoard shows a step's highest reading (the last step may hold several)
    last = max((r for r in rows if r.step == rows[-1].step), key=lambda r: r.used_bytes)
    wanted = {"memory/host/used_mib": last.used_bytes / MIB, "memory/host/limit_mib": last.limit_bytes / MIB}
    query = urllib.parse.urlencode({"tagFilter": "memory/host/(used|limit)_mib"})
    browser.get(f"{tensorboard_url}/?{query}#timeseries")
    shot = tmp_path / "tensorboard_time_series.png"
    state = {}

    def rendered():
        cards = browser.execute_script(CARDS_JS)
        browser.save_screenshot(str(shot))
        image = Image.open(shot)
        state.update(cards=cards, pixels={tag: run_colored_pixels(image, card["rect"], card["color"])
                                          for tag, card in cards.items() if card["color"]})
        return set(wanted) <= set(cards) and all(state["pixels"].get(tag, 0) > 100 for tag in wanted) and all(
            _shows(cards[tag]["table"], value) for tag, value in wanted.items())

    ok = wait_for(rendered)  # before the lines are drawn a chart box holds ~10 such pixels, after it ~500-1000
    print(f"screenshot: {shot}")
    assert ok, f"memory charts not rendered: {state}"


def _shows(text: str, value: float) -> bool:
    """Whether a card's data table shows `value` (TensorBoard writes e.g. 24,105.1328 or 982.168)."""
    shown = [float(number.replace(",", "")) for number in re.findall(r"\d[\d,]*\.\d+", text)]
    return any(abs(v - value) <= max(0.01, 1e-4 * value) for v in shown)


@pytest.mark.slow
def test_custom_scalars_page_charts_used_against_limit(browser, tensorboard_url, tmp_path):
    browser.get(f"{tensorboard_url}/#custom_scalars")

    def rendered():
        page = browser.execute_script(DEEP_TEXT_JS)
        # two series (used, limit), each drawn raw and smoothed
        ok = "host: used vs limit (MiB)" in page["text"] and "Matches (2)" in page["text"] and page["lines"] >= 2
        return page if ok else None

    page = wait_for(rendered)
    shot = tmp_path / "tensorboard_custom_scalars.png"
    browser.save_screenshot(str(shot))
    print(f"screenshot: {shot}")
    assert page, "the custom-scalars chart 'host: used vs limit (MiB)' with its 2 series did not render"
