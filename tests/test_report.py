"""The report files, built from a real climb in the run store (scripted backend)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from helpers import write_task
from rungwise.backends.scripted import ScriptedBackend
from rungwise.climb import climb
from rungwise.config.task import load_task
from rungwise.errors import RungwiseError
from rungwise.report import write_report
from rungwise.report.data import report_data, report_data_from_store
from rungwise.report.svg import bar_chart, line_chart, nice_ticks, score_chart
from rungwise.types import Chat


def oracle(chat: Chat) -> str:
    """Right with demos in the prompt (few-shot); 'billing' (or markup, to test escaping) without."""
    text = chat[-1]["content"]
    if not any(m["role"] == "assistant" for m in chat):
        return "<b>billing</b>" if "number 3" in text else "billing"
    return "billing" if "invoice" in text else "bug" if "crash" in text else "account"


@pytest.fixture
def stored_run(tmp_path: Path) -> tuple[int, Path]:
    p = write_task(tmp_path, target="accuracy >= 0.9",
                   economics={"daily_volume": 20_000, "self_host_usd_per_hour": 0.5},
                   factors={"clean_examples": 120, "update_frequency": "weekly"})
    res = climb(load_task(p), backend=ScriptedBackend(oracle), all_rungs=True)
    return res.run_id, p


def test_report_data_from_the_store(stored_run: tuple[int, Path]) -> None:
    run_id, _ = stored_run
    data = report_data_from_store(run_id)
    assert data["generator"] == "rungwise" and data["run_id"] == run_id and data["task"] == "t"
    assert [r["name"] for r in data["rungs"]] == ["zero_shot", "few_shot"]
    assert data["rungs"][1]["metric"]["value"] == 1.0 and data["rungs"][1]["comparison"]["significant"]
    n = data["n_test"]
    assert len(data["examples"]) == n and all(set(e["rungs"]) == {"zero_shot", "few_shot"} for e in data["examples"])
    wrong = [e for e in data["examples"] if e["rungs"]["zero_shot"]["score"] < 1]
    assert len(wrong) == round(n * (1 - data["rungs"][0]["metric"]["value"]))
    # Measured on this machine (the scripted double): priced self-hosted; gpt-4o-mini is only a what-if.
    cost = data["rungs"][0]["cost"]
    assert cost["hosted"] is None and cost["best"] == "self_hosted" and cost["self_hosted"]["replicas"] == 1
    assert cost["what_if"]["what_if"] is True and cost["what_if"]["per_1k_usd"] > 0
    assert cost["what_if"]["label"] == "what-if: these token counts on openai/gpt-4o-mini"
    econ = data["economics"]
    assert econ["measured"]["backend"] == "scripted" and econ["measured"]["cpus"] >= 1
    assert econ["pricing"]["catalog_date"] and "what-if" in " ".join(econ["pricing"]["assumptions"])
    assert data["economics"]["daily_volume"] == 20_000 and data["economics"]["curves"]["series"]
    v = data["verdict"]
    assert v["recommended"] == "few_shot" and "zero_shot" in v["gap"]
    json.dumps(data)  # JSON-able
    # A what-if volume re-prices without touching the run.
    assert report_data_from_store("latest", daily_volume=5)["economics"]["daily_volume"] == 5
    with pytest.raises(RungwiseError, match="not a number"):
        report_data_from_store("yesterday")


def test_write_report_files(stored_run: tuple[int, Path], tmp_path: Path) -> None:
    run_id, _ = stored_run
    data = report_data_from_store(run_id)
    out = tmp_path / "rep"
    paths = write_report(data, out)
    assert set(paths) == {"html", "markdown", "json"} and all(p.exists() for p in paths.values())
    page = paths["html"].read_text()
    # Self-contained: no external scripts, styles or images.
    assert not re.search(r"""(src|href)=['"]?(https?:)?//""", page)
    assert page.count("<svg") == 5  # score, tokens, cost per 1k, monthly vs volume, latency
    assert "Recommended: few_shot" in page
    # Model output is escaped, never injected.
    assert "<b>billing</b>" not in page and "&lt;b&gt;billing&lt;/b&gt;" in page
    assert page.count("<tr data-fail=") == data["n_test"]
    # The what-if is labelled as one in every format, and the catalog's date and age are shown.
    assert "what-if (not measured)" in page and "what-if: these token counts on openai/gpt-4o-mini" in page
    assert "prices: catalog revised" in page and "id='pricing'" in page
    md = paths["markdown"].read_text()
    assert "| zero_shot | accuracy" in md and "## Verdict" in md and "**Recommended: few_shot" in md
    assert "what-if: on openai/gpt-4o-mini $/1k" in md and "prices: catalog revised" in md
    assert "- what-if: the measured token counts on openai/gpt-4o-mini" in md
    assert re.search(r"### zero_shot: \d+ of \d+ wrong", md)
    back = json.loads(paths["json"].read_text())
    assert back["rungs"] == json.loads(json.dumps(data["rungs"]))
    assert back["rungs"][0]["cost"]["what_if"]["what_if"] is True and back["economics"]["pricing"]["as_of"]
    # A second report replaces our own files.
    write_report(data, out)


def test_never_overwrites_a_file_it_did_not_write(tmp_path: Path) -> None:
    out = tmp_path / "rep"
    out.mkdir()
    (out / "report.md").write_text("my notes\n")
    with pytest.raises(RungwiseError, match="not written by rungwise"):
        write_report({"task": "t", "rungs": []}, out)
    assert (out / "report.md").read_text() == "my notes\n"
    assert not (out / "report.html").exists()
    (tmp_path / "afile").write_text("x")
    with pytest.raises(RungwiseError, match="not a directory"):
        write_report({"task": "t", "rungs": []}, tmp_path / "afile")
    with pytest.raises(RungwiseError, match="at least 'task' and 'rungs'"):
        write_report({"rungs": []}, out)


def test_minimal_data_renders(tmp_path: Path) -> None:
    paths = write_report({"task": "empty", "rungs": []}, tmp_path / "r")
    page = paths["html"].read_text()
    assert "No rung was measured" in page and "No verdict" in page


def test_report_data_in_memory_without_prices(stored_run: tuple[int, Path]) -> None:
    from rungwise.climb import load_climb

    run_id, _ = stored_run
    c = load_climb(run_id)
    data = report_data(c)  # no task: no costs, no verdict, no examples
    assert data["verdict"] is None and data["economics"] is None and data["examples"] == []
    assert "No verdict" in write_report(data, Path(str(stored_run[1].parent / "r2")))["html"].read_text()


def test_svg_helpers() -> None:
    assert nice_ticks(0, 1403) == [0, 500, 1000, 1500]
    assert nice_ticks(0.55, 0.96)[0] == 0.5 and nice_ticks(0.55, 0.96)[-1] == 1.0
    s = score_chart(["a", "<b>"], [0.5, 0.9], [0.4, 0.85], [0.6, 0.95], metric="accuracy", target=0.8)
    assert s.startswith("<svg") and "&lt;b&gt;" in s and 'class="target"' in s and s.count('class="point"') == 2
    b = bar_chart(["x", "y"], {"p50": [1, 2], "p95": [2, 4]}, title="latency", unit=" ms")
    assert b.count('class="bar"') == 4
    ln = line_chart([1, 10, 100], {"a": [1, 2, 3], "b": [3, 2, 1]}, title="t", x_label="x", y_label="y",
                    vline=(10, "now"), points=[(10, 2, "cross")])
    assert ln.count('class="line"') == 2 and 'class="marker"' in ln and 'class="vline"' in ln


HOSTILE_NAME = "t</script><!--<script>x"
HOSTILE_INPUT = "<img src=x onerror=alert(1)> and [a link](javascript:alert(1)) a|b"
HOSTILE_PREDICTION = "**loud** `code` <script>x</script>"


def _hostile_report(tmp_path: Path) -> dict[str, Path]:
    data = {
        "task": HOSTILE_NAME, "run_id": 1, "model": "m`x", "n_test": 1,
        "rungs": [{"name": "zero_shot", "metric": {"name": "accuracy", "value": 0.0, "ci_low": 0.0, "ci_high": 0.0}}],
        "examples": [{"input": HOSTILE_INPUT, "expected": "billing", "source": "d.jsonl:1",
                      "rungs": {"zero_shot": {"prediction": HOSTILE_PREDICTION, "score": 0.0, "valid": False}}}],
    }
    return write_report(data, tmp_path / "r")


def test_html_report_embeds_json_that_cannot_end_its_script(tmp_path: Path) -> None:
    page = _hostile_report(tmp_path)["html"].read_text()
    embedded = re.search(r"<script type='application/json' id='report-meta'>(.*?)</script>", page, re.S)
    assert embedded is not None
    assert "<" not in embedded.group(1) and json.loads(embedded.group(1))["task"] == HOSTILE_NAME
    # the page holds exactly its own two scripts: no user text opened or closed one
    assert page.count("<script") == 2 and page.count("</script>") == 2 and "<!--<" not in page


def test_markdown_report_shows_inputs_and_outputs_as_text(tmp_path: Path) -> None:
    from html.parser import HTMLParser

    from markdown_it import MarkdownIt

    md = _hostile_report(tmp_path)["markdown"].read_text()
    rendered = MarkdownIt("commonmark").enable("table").render(md)

    class Tags(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.tags: set[str] = set()
            self.text: list[str] = []

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            self.tags.add(tag)

        def handle_data(self, data: str) -> None:
            self.text.append(data)

    page = Tags()
    page.feed(rendered)
    assert not page.tags & {"img", "script", "a"}, page.tags  # and the text below shows **loud** unrendered
    text = " ".join("".join(page.text).split())
    for shown in (HOSTILE_NAME, HOSTILE_INPUT, HOSTILE_PREDICTION, "m`x"):
        assert shown in text, (shown, text)
    rows = [line for line in md.splitlines() if line.startswith("| <") or "onerror" in line]
    assert len(rows) == 1 and rows[0].count(" | ") == 3  # one table row of four cells: the pipe stayed in its cell
