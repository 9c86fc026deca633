"""The HTML report in a real headless Chromium: charts and tables render, the example browser
filters, and the console stays clean.

Needs Debian's chromium and the playwright package (never `playwright install`):
    apt-get install -y chromium && pip install playwright
Skipped, saying why, where either is missing.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from helpers import write_task
from rungwise.backends.scripted import ScriptedBackend
from rungwise.climb import climb
from rungwise.config.task import load_task
from rungwise.report import write_report
from rungwise.report.data import report_data_from_store
from rungwise.types import Chat

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed: pip install playwright")
CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"), "/usr/bin/chromium")
                 if p and Path(p).exists()), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary: apt-get install -y chromium")


def oracle(chat: Chat) -> str:
    text = chat[-1]["content"]
    if not any(m["role"] == "assistant" for m in chat):
        return "<script>window.__xss = 1</script>" if "number 3" in text else "billing"
    return "billing" if "invoice" in text else "bug" if "crash" in text else "account"


def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    p = write_task(tmp_path, target="accuracy >= 0.9", economics={"daily_volume": 20_000, "self_host_gpu": "l4"})
    res = climb(load_task(p), backend=ScriptedBackend(oracle), all_rungs=True)
    data = report_data_from_store(res.run_id)
    html = write_report(data, tmp_path / "report")["html"]
    n = data["n_test"]
    zero_shot_wrong = sum(1 for e in data["examples"] if e["rungs"]["zero_shot"]["score"] < 1)
    assert 0 < zero_shot_wrong < n

    messages: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: messages.append(f"{m.type}: {m.text}") if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: messages.append(f"pageerror: {e}"))
            page.on("requestfailed", lambda r: messages.append(f"requestfailed: {r.url}"))
            page.goto(html.as_uri())
            page.wait_for_load_state("load")

            # Five charts, each drawn with a real size and its marks.
            charts = page.locator("svg.chart")
            assert charts.count() == 5
            for i in range(5):
                box = charts.nth(i).bounding_box()
                assert box is not None and box["width"] > 300 and box["height"] > 100
            assert page.locator("svg.chart circle.point").count() == 2  # one score per rung
            assert page.locator("svg.chart line.target").count() == 1
            assert page.locator("svg.chart rect.bar").count() >= 6
            assert page.locator("svg.chart polyline.line").count() == 2  # monthly cost per rung
            # The SVG text is laid out (a non-zero bounding box), not just present in the DOM.
            assert page.evaluate("document.querySelector('svg.chart text').getBBox().width") > 0

            # Tables.
            assert page.locator("#ladder-table tbody tr").count() == 2
            assert page.locator("#cost-table tbody tr").count() == 4  # hosted + self-hosted per rung
            assert "Recommended: few_shot" in page.locator("#verdict").inner_text()

            # The per-example browser filters with its inline script.
            rows = page.locator("#example-table tbody tr")
            assert rows.count() == n
            assert page.locator("#ex-count").inner_text() == f"{n} of {n} examples shown"
            page.select_option("#ex-rung", "zero_shot")
            page.check("#ex-fail")
            assert page.locator("#example-table tbody tr:visible").count() == zero_shot_wrong
            assert page.locator("#ex-count").inner_text() == f"{zero_shot_wrong} of {n} examples shown"
            page.select_option("#ex-rung", "few_shot")
            assert page.locator("#example-table tbody tr:visible").count() == 0
            page.uncheck("#ex-fail")
            page.fill("#ex-q", "crash")
            shown = page.locator("#example-table tbody tr:visible")
            assert 0 < shown.count() < n and "crash" in shown.first.inner_text()

            # Model output containing a script tag was escaped, not executed.
            assert page.evaluate("window.__xss") is None
            assert "<script>window.__xss = 1</script>" in page.locator("#example-table").inner_text()
        finally:
            browser.close()
    assert messages == []
