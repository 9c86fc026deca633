"""A rung (and a metric) from another package: one file, found through entry points, climbed,
priced, explained and served without any edit to rungwise's own modules."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from helpers import ticket_rows, write_jsonl

PLUGIN = '''
"""A throwaway plugin package: a rung that shouts its instructions, and a metric."""

from pydantic import Field

from rungwise.config.base import Strict
from rungwise.evaluate.metrics import Metric
from rungwise.prompting import PromptTemplate
from rungwise.rungs.base import Prepared, PromptArtifact, Rung, base_system


class ShoutConfig(Strict):
    suffix: str = Field("!", description="Appended to the system prompt.")


class Shout(Rung):
    name = "shout"
    summary = "the instructions in capitals"
    Config = ShoutConfig

    def prepare(self, ctx):
        tpl = PromptTemplate(base_system(ctx.task).upper() + ctx.config.suffix)
        return Prepared(PromptArtifact(prompt=tpl.to_dict()), tpl)

    def load(self, ctx, artifact):
        return Prepared(artifact, PromptTemplate.from_dict(artifact.prompt))


class StartsWithB(Metric):
    """1 when the answer starts with the letter b."""

    name = "starts_with_b"

    def score_one(self, prediction, example):
        return float(prediction.strip().lower().startswith("b")), bool(prediction.strip()), prediction.strip()
'''


@pytest.fixture
def plugin_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Install the plugin the way pip would expose it: a module plus a .dist-info with entry points."""
    site = tmp_path / "site"
    (site / "rw_shout_plugin").mkdir(parents=True)
    (site / "rw_shout_plugin" / "__init__.py").write_text(PLUGIN)
    dist = site / "rw_shout_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: rw-shout-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[rungwise.rungs]\nshout = rw_shout_plugin:Shout\n\n[rungwise.metrics]\nstarts_with_b = rw_shout_plugin:StartsWithB\n"
    )
    monkeypatch.syspath_prepend(str(site))
    from rungwise.registry import METRICS, RUNGS

    RUNGS.refresh()
    METRICS.refresh()
    yield site
    RUNGS.unregister("shout")
    METRICS.unregister("starts_with_b")


def _task(tmp_path: Path, **over: Any) -> Path:
    write_jsonl(tmp_path / "data.jsonl", ticket_rows())
    task = {
        "name": "plugged",
        "data": {"path": "data.jsonl", "test_fraction": 0.3, "seed": 1},
        "instructions": "Route the ticket.",
        "labels": ["billing", "bug", "account"],
        "metric": "accuracy",
        "target": "accuracy >= 0.3",
        "model": {"backend": "scripted", "script": {"default": "billing"}},
        "rungs": {"order": ["zero_shot", "shout"], "shout": {"suffix": " NOW"}},
        **over,
    }
    p = tmp_path / "task.yaml"
    p.write_text(yaml.safe_dump(task, sort_keys=False))
    return p


def test_a_plugin_rung_climbs_prices_explains_and_serves(plugin_path: Path, tmp_path: Path) -> None:
    from rungwise.backends.openai_compat import OpenAIBackend
    from rungwise.climb import climb
    from rungwise.config.task import load_task
    from rungwise.serve import app_for_task, background
    from rungwise.types import GenParams

    task = load_task(_task(tmp_path))
    assert task.rungs.section("shout").suffix == " NOW"
    res = climb(task, all_rungs=True)
    shout = res.rungs[1]
    assert shout.rung == "shout" and shout.kind.name == "prompt"
    assert shout.artifact["prompt"]["system"].endswith("ROUTE THE TICKET.\n\nANSWER WITH EXACTLY ONE LABEL FROM THIS "
                                                       "LIST AND NOTHING ELSE: BILLING, BUG, ACCOUNT NOW")
    assert [c.rung for c in res.costs] == ["zero_shot", "shout"] and res.costs[1].best() is not None
    assert res.verdict is not None and any(r.startswith("shout:") for r in res.verdict.reasons)

    app = app_for_task(task, "shout", res.run_id)
    try:
        with background(app) as url:
            out = OpenAIBackend(url + "/v1", "plugged-shout", max_retries=0).generate(
                [[{"role": "user", "content": "refund please"}]], GenParams())
        sent = app.state.backend.calls[-1]
    finally:
        app.state.close()
    assert out[0].text == "billing" and sent[0]["content"].endswith("ACCOUNT NOW")


def test_a_plugin_section_is_validated_by_the_plugin_config(plugin_path: Path, tmp_path: Path) -> None:
    from rungwise.config.task import load_task
    from rungwise.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        load_task(_task(tmp_path, rungs={"order": ["shout"], "shout": {"suffx": "!"}}))
    assert "rungs.shout.suffx" in str(err.value) and "task.yaml:" in str(err.value)


def test_a_plugin_metric_is_found_by_name(plugin_path: Path, tmp_path: Path) -> None:
    from rungwise.climb import climb
    from rungwise.config.task import load_task

    res = climb(load_task(_task(tmp_path, metric="starts_with_b", target=None, rungs={"order": ["zero_shot"]})))
    assert res.rungs[0].metric.name == "starts_with_b" and res.rungs[0].metric.value == 1.0


def test_the_cli_lists_installed_plugins(plugin_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin_path), os.environ.get("PYTHONPATH", "")])}
    code = "import sys; from rungwise.cli import main; sys.argv = ['rungwise', 'rungs', '--json']; main()"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert '"name": "shout"' in proc.stdout and "rw_shout_plugin:Shout" in proc.stdout
    assert '"name": "starts_with_b"' in proc.stdout and '"name": "zero_shot"' in proc.stdout


def test_unknown_rungs_and_sections_name_the_valid_ones(tmp_path: Path) -> None:
    from rungwise.config.task import load_task
    from rungwise.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        load_task(_task(tmp_path, rungs={"order": ["zero_shot", "fewshot"], "finetuen": {}}))
    text = textwrap.dedent(str(err.value))
    assert "rungs.order.1" in text and "unknown rung 'fewshot'" in text and "few_shot" in text
    assert "rungs.finetuen" in text and "unknown rung section" in text
