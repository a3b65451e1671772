"""Screenshots of the app for the README, in Debian's headless chromium (no downloaded browser).

    .venv/bin/python scripts/app_screenshot.py [--artifact outputs/demo/tiny/router]
        [--bench outputs/demo/agiqa3k] [--out docs]

Serves the app on 127.0.0.1, routes a few prompts, generates baseline vs routed for one, and
saves docs/app-route.png and docs/app-bench.png.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

from t2iroute.testing.app import served_app

PROMPTS = (
    "three small striped blue squares left of a dotted green triangle\na red circle\ntwo large checked yellow triangles"
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--artifact", default="outputs/demo/testbed/router")
    ap.add_argument("--bench", default="outputs/demo/testbed-bench")
    ap.add_argument("--out", default="docs")
    ap.add_argument(
        "--budget",
        type=float,
        default=None,
        help="route under 'target mean cost' at this cost per prompt (default: the artifact's policy)",
    )
    ap.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    with served_app(artifact=Path(a.artifact).resolve(), bench=Path(a.bench).resolve()) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=a.chromium, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1900})
        page.goto(url)
        expect(page.get_by_text("Routed to")).to_be_visible(timeout=120_000)
        if a.budget is not None:
            page.get_by_text("target mean cost", exact=True).click()
            box = page.get_by_label("target mean cost per prompt", exact=False)
            box.fill(str(a.budget))
            box.press("Enter")
            page.wait_for_timeout(1500)
        page.get_by_label("Prompt, or many prompts one per line").fill(PROMPTS)
        page.get_by_role("button", name="Route", exact=True).click()
        expect(page.get_by_text("Prompts per backend")).to_be_visible(timeout=60_000)
        page.get_by_role("button", name="Generate baseline and routed").click()
        expect(page.get_by_test_id("stImage")).to_have_count(2, timeout=120_000)
        page.wait_for_timeout(1000)
        page.screenshot(path=str(out / "app-route.png"), full_page=True)
        page.get_by_role("link", name="Benchmark").click()
        expect(page.get_by_text("Cost saved at equal quality")).to_be_visible(timeout=60_000)
        page.set_viewport_size({"width": 1400, "height": 1100})
        page.wait_for_timeout(1500)
        page.screenshot(path=str(out / "app-bench.png"), full_page=True)
        browser.close()
    print(f"wrote {out / 'app-route.png'} and {out / 'app-bench.png'}")


if __name__ == "__main__":
    main()
