"""The dashboard in a real headless Chromium (Debian's, driven by Playwright; Playwright never
downloads a browser of its own here), on a served archive of signed measurements.

Assertions are on what the page shows: the filters read back from the URL, the charts drawn
(with the outage event on their time axis), the domain x network matrix with its technique,
probe health, and the measurement page with its DNS replies, control view and a signature
verified by the server with the key shown.  Screenshots are kept as test artefacts in
$VIGIL_TEST_ARTIFACTS (default build/test-artifacts/dashboard/).
"""

from __future__ import annotations

import base64
import os
import shutil
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from collector.config import ApiConfig, CollectorConfig, OutagesConfig, StoreConfig
from collector.outages.detector import OutageEvent
from collector.runtime import ServeSettings
from collector.service import create_app
from lab.archive import Archive, generate
from tests.support.collector import archive_store

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("VIGIL_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync"]
REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("VIGIL_TEST_ARTIFACTS", REPO / "build" / "test-artifacts")
                 ) / "dashboard"
NOW = time.time()

playwright_api = pytest.importorskip("playwright.async_api",
                                     reason="the playwright package is not installed")
if shutil.which(CHROMIUM) is None and not Path(CHROMIUM).exists():
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)",
                allow_module_level=True)


@pytest.fixture(scope="module")
def archive() -> Archive:
    return generate(900, days=20, until=NOW - 60, seed=21)


@pytest.fixture
async def base_url(tmp_path: Path, archive: Archive) -> AsyncIterator[str]:
    url = archive_store(tmp_path, archive, [OutageEvent(
        "iq-cut", "cc:IQ", NOW - 6 * 86400, NOW - 6 * 86400 + 120, NOW - 6 * 86400 + 300,
        NOW - 5 * 86400, ("a", "b", "c"), 0.9, 0.0, {}, ())])
    config = CollectorConfig(store=StoreConfig(url=url), api=ApiConfig(stats_cache_s=0.0),
                             outages=OutagesConfig(enabled=False))
    app = create_app(ServeSettings(config=config.validate(), ingest=False, outages=False))
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("/"))
    finally:
        await server.close()


@pytest.fixture
async def page(base_url: str) -> AsyncIterator[Any]:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    async with playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                           args=CHROMIUM_FLAGS[1:])
        context = await browser.new_context(viewport={"width": 1280, "height": 900})
        pg = await context.new_page()
        pg.errors = []  # type: ignore[attr-defined]
        # Console errors (script errors, CSP violations) and failed loads, except the
        # favicon the browser asks for on its own.
        pg.on("console", lambda m: m.type == "error" and not m.text.startswith(
            "Failed to load resource") and pg.errors.append(m.text))
        pg.on("response", lambda r: r.status >= 400 and not r.url.endswith("/favicon.ico")
              and pg.errors.append(f"{r.status} {r.url}"))
        pg.on("pageerror", lambda e: pg.errors.append(str(e)))
        try:
            yield pg
        finally:
            await browser.close()


async def shot(page: Any, name: str, full_page: bool = True) -> Path:
    path = ARTIFACTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=full_page)
    assert path.stat().st_size > 10_000
    return path


async def wait_matrix(page: Any) -> None:
    await page.wait_for_function(
        "document.querySelectorAll('#matrix tbody td[data-domain]').length > 0",
        timeout=15_000)


async def test_dashboard_shows_time_matrix_health_and_keeps_filters_in_the_url(
        page: Any, base_url: str, archive: Archive) -> None:
    since = datetime.fromtimestamp(NOW - 15 * 86400, UTC).date().isoformat()
    await page.goto(f"{base_url}?probe_cc=IR&since={since}")
    await wait_matrix(page)
    assert await page.input_value("input[name=probe_cc]") == "IR"
    assert await page.input_value("input[name=since]") == since
    # Both charts were drawn by the server and loaded, with the filters of the view.
    for chart in ("country", "network"):
        img = page.locator(f"#chart-{chart}")
        await page.wait_for_function(
            f"(() => {{ const i = document.getElementById('chart-{chart}');"
            " return i.complete && i.naturalWidth > 0; })()", timeout=15_000)
        src = await img.get_attribute("src")
        assert src is not None and "probe_cc=IR" in src and f"by={chart}" in src
    # The matrix: twitter.com is DNS-blocked on AS44244 (Irancell) most of the time.
    cell = page.locator("#matrix td[data-domain='twitter.com'][data-network='AS44244']")
    text = await cell.inner_text()
    assert "dns" in text and text.endswith("dns") and "%" in text
    assert int(text.split("%")[0]) >= 50 and await cell.get_attribute("class") == "cell-high"
    assert await page.locator("#matrix thead th").all_inner_texts() == [
        "Domain", "AS197207", "AS44244"]
    health = await page.locator("#probes tbody tr td:nth-child(3)").all_inner_texts()
    assert health and set(health) <= {"online", "silent", "offline", "never seen"}
    await shot(page, "dashboard-ir")

    # Changing a filter updates the URL: the view can be shared as it is.
    await page.fill("input[name=probe_cc]", "IQ")
    await page.click("#filters button[type=submit]")
    await page.wait_for_function("location.search.includes('probe_cc=IQ')", timeout=10_000)
    await page.wait_for_function(
        "document.querySelector(\"#matrix td[data-domain='telegram.org']\") !== null",
        timeout=15_000)
    telegram = await page.locator("#matrix td[data-domain='telegram.org']").all_inner_texts()
    assert telegram and all(t.endswith("dns") for t in telegram)
    permalink = await page.get_attribute("#permalink", "href")
    assert permalink is not None and "probe_cc=IQ" in permalink
    await shot(page, "dashboard-iq")
    assert not page.errors, page.errors


async def test_chart_draws_outage_events_on_the_time_axis(page: Any, base_url: str) -> None:
    await page.goto(f"{base_url}charts/share.svg?by=country&probe_cc=IQ")
    svg = page.locator("svg")
    assert await svg.count() == 1
    assert await page.locator("rect.event-outage").count() == 1
    title = await page.locator("rect.event-outage title").text_content() or ""
    assert "cc:IQ" in title and "3 probe(s)" in title
    assert await page.locator("polyline.series[data-series='IQ']").count() == 1
    await shot(page, "chart-iq", full_page=False)


async def test_measurement_page_is_readable_and_verified(
        page: Any, base_url: str, archive: Archive) -> None:
    await page.goto(f"{base_url}?blocking=dns&probe_cc=IQ")
    await page.wait_for_selector("#measurements tbody a.read", timeout=15_000)
    await page.locator("#measurements tbody a.read").first.click()
    await page.wait_for_selector("p.signature", timeout=10_000)
    assert "/measurement/" in page.url
    mid = page.url.rsplit("/", 1)[1]
    record = archive.records[mid]
    probe = archive.probes[record["probe_id"]]
    signature = await page.locator("p.signature").inner_text()
    assert "signature verified" in signature
    key = await page.locator("code.pubkey").inner_text()
    assert key == base64.b64encode(probe.public_raw).decode("ascii")
    dns = await page.locator("#dns").inner_text()
    assert "More than one reply" in dns and "10.10.34.35" in dns and "203.0.113.80" in dns
    assert "(used)" in dns
    control = await page.locator("#control").inner_text()
    assert "203.0.113.80" in control
    verdict = await page.locator("p.verdict").inner_text()
    assert "blocked" in verdict and "dns.injected" in verdict and "confirmed" in verdict
    for section in ("#tcp", "#tls", "#http"):
        assert await page.locator(section).count() == 1
    await shot(page, "measurement")
    assert not page.errors, page.errors


async def test_a_tampered_record_is_shown_as_not_verified(
        page: Any, base_url: str, archive: Archive, tmp_path: Path) -> None:
    mid = next(iter(archive.records))
    import sqlite3

    db = sqlite3.connect(tmp_path / "collector.db")
    db.execute("UPDATE measurements SET payload = CAST(REPLACE(CAST(payload AS TEXT), "
               "'vigil-agent', 'vigil-agenT') AS BLOB) WHERE measurement_id = ?", (mid,))
    db.commit()
    db.close()
    await page.goto(f"{base_url}measurement/{mid}")
    signature = await page.locator("p.signature").inner_text()
    assert "NOT verified" in signature
    assert (datetime.now(UTC) - timedelta(days=1)).year >= 2025
