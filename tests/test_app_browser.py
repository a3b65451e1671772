"""End to end in a real headless Chromium (Debian's `chromium`, driven by playwright; never a
downloaded browser): serve the app on 127.0.0.1, route a prompt, see the decision, generate,
save a screenshot. Skipped where Chromium is absent, unless T2IROUTE_REQUIRE_BROWSER=1 (CI)."""

import os
import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser


def _chromium() -> str | None:
    for c in (os.environ.get("T2IROUTE_CHROMIUM"), shutil.which("chromium"), "/usr/bin/chromium"):
        if c and Path(c).is_file():
            return c
    return None


def _need_browser():
    why = None
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        why = "playwright is not installed (pip install playwright; no browser download is needed)"
    if _chromium() is None:
        why = "Debian's chromium is not installed (apt-get install chromium)"
    if why:
        if os.environ.get("T2IROUTE_REQUIRE_BROWSER") == "1":
            pytest.fail(why)
        pytest.skip(why)


def test_route_and_generate_in_chromium(tiny_artifact, tmp_path):
    _need_browser()
    from playwright.sync_api import expect, sync_playwright

    from t2iroute.testing.app import served_app

    shot = tmp_path / "app.png"
    with served_app(artifact=tiny_artifact, log_path=tmp_path / "streamlit.log") as url, sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=_chromium(), headless=True, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1700})
            page.goto(url)
            expect(page.get_by_text("Routed to")).to_be_visible(timeout=90_000)
            page.get_by_label("Prompt, or many prompts one per line").fill("two birds on a wire")
            page.get_by_role("button", name="Route", exact=True).click()
            expect(page.get_by_text("Decision for: two birds on a wire")).to_be_visible(timeout=60_000)
            routed = page.get_by_test_id("stMetricValue").first
            expect(routed).to_have_text("slow")  # the synthetic table's choice for 'two ...' prompts
            page.get_by_role("button", name="Generate baseline and routed").click()
            expect(page.get_by_test_id("stImage")).to_have_count(2, timeout=90_000)
            expect(page.get_by_text("steps run").first).to_be_visible()
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert shot.stat().st_size > 20_000
    assert b"Traceback" not in (tmp_path / "streamlit.log").read_bytes()
