"""`vivit-batch report` in a real headless Chromium: the HTML page, with and without thumbnails."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from vivit_batch.cli import main


@pytest.mark.slow  # a headless browser: 5 to 10 s
@pytest.mark.skipif(
    not shutil.which("chromium"), reason="chromium is not installed (apt-get install chromium)"
)
def test_the_html_page_renders_in_headless_chromium(output, tmp_path):
    page = tmp_path / "report.html"
    assert main(["report", output.uri, "--truth-column", "truth", "--html", str(page)]) == 0
    browser = chromium(page, tmp_path)
    assert ":CONSOLE" not in browser.log, browser.log  # no console message, no uncaught error
    assert browser.page_requests == []
    assert 'id="page-errors" hidden=""></div>' in browser.dom  # its script saw no error
    assert browser.dom.count('class="main-svg"') >= 5 * 2  # plotly draws two per chart
    assert "night2" in browser.dom and "top-3 accuracy" in browser.dom
    with Image.open(browser.screenshot) as image:
        pixels = image.width * image.height
        dark = sum(image.convert("L").histogram()[:200])
        coloured = sum(image.convert("HSV").getchannel("S").histogram()[80:])
    assert dark > 0.05 * pixels  # not blank
    assert coloured > 0.05 * pixels  # the charts' bars, lines and cells, not only text


@pytest.mark.slow  # a headless browser: 5 to 10 s
@pytest.mark.skipif(
    not shutil.which("chromium"), reason="chromium is not installed (apt-get install chromium)"
)
def test_the_page_with_thumbnails_renders_in_headless_chromium(video_output, tmp_path):
    page = tmp_path / "report.html"
    assert main(["report", video_output.uri, "--html", str(page)]) == 0  # 3 per side
    browser = chromium(page, tmp_path)
    assert ":CONSOLE" not in browser.log, browser.log
    assert browser.page_requests == []
    assert 'id="page-errors" hidden=""></div>' in browser.dom  # every thumbnail shown
    assert browser.dom.count('<img src="data:image/jpeg;base64,') == 3  # cat: v0, v4, v1
    assert browser.dom.count('<div class="missing"><b>') == 2  # dog: v2, v3


@dataclass
class Rendered:
    dom: str
    """the page's DOM after its scripts ran"""
    log: str
    """Chromium's log, console messages included"""
    screenshot: Path
    page_requests: list[str]
    """the http(s) URLs the page asked for (Chromium's own requests left out)"""


def chromium(page: Path, scratch: Path) -> Rendered:
    """`page` loaded by headless Chromium, which can resolve no host name: whatever it or the
    page asks for, nothing leaves this machine."""
    screenshot, netlog = scratch / "screenshot.png", scratch / "netlog.json"
    result = subprocess.run(
        [
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--host-resolver-rules=MAP * ~NOTFOUND",
            "--window-size=1280,2000",
            "--virtual-time-budget=10000",  # lets the charts' scripts finish first
            "--enable-logging=stderr",
            "--v=0",
            f"--log-net-log={netlog}",
            "--dump-dom",
            f"--screenshot={screenshot}",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return Rendered(result.stdout, result.stderr, screenshot, requests_from_file_pages(netlog))


def requests_from_file_pages(netlog: Path) -> list[str]:
    """The http(s) URLs in a Chromium net log that a file:// page asked for (the network
    isolation key names the page's origin)."""
    events = json.loads(netlog.read_text())["events"]
    return sorted(
        {
            params["url"]
            for params in (event.get("params", {}) for event in events)
            if str(params.get("url", "")).startswith("http")
            and "file://" in str(params.get("network_isolation_key", ""))
        }
    )
