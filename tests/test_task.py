from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from rungwise.config.task import Task, load_task, parse_target
from rungwise.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def shipped_yamls() -> list[Path]:
    return sorted(p for p in REPO.glob("**/*.yaml") if ".venv" not in p.parts and ".rungwise" not in p.parts)


def test_repo_ships_task_yamls() -> None:
    names = {p.relative_to(REPO).as_posix() for p in shipped_yamls()}
    assert "src/rungwise/templates/ticket-routing/task.yaml" in names


@pytest.mark.parametrize("path", shipped_yamls(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_shipped_yaml_loads(path: Path) -> None:
    raw = yaml.safe_load(path.read_text())
    if isinstance(raw, dict) and "data" in raw and "name" in raw:
        task = load_task(path)
        assert task.name
    else:  # non-task YAML (price catalog, ...): must at least parse; its own module's tests validate it
        assert raw is not None


def test_parse_target() -> None:
    t = parse_target("accuracy >= 90%")
    assert (t.metric, t.op, t.value) == ("accuracy", ">=", 0.9)
    assert t.met(0.9) and not t.met(0.89)
    with pytest.raises(ValueError):
        parse_target("accuracy is high")


def test_defaults_and_relative_paths(tmp_path: Path) -> None:
    (tmp_path / "task.yaml").write_text("name: x\ndata:\n  path: d.jsonl\n")
    task = load_task(tmp_path)
    assert task.model.backend == "local" and task.model.id == "smollm2-135m-instruct"
    assert task.resolve("d.jsonl") == tmp_path.resolve() / "d.jsonl"
    assert task.rungs.order[:2] == ["zero_shot", "few_shot"]


def test_unknown_field_names_line_and_field(tmp_path: Path) -> None:
    p = tmp_path / "task.yaml"
    p.write_text("name: x\ndata:\n  path: d.jsonl\n  tset_fraction: 0.2\n")
    with pytest.raises(ConfigError) as e:
        load_task(p)
    msg = str(e.value)
    assert f"{p}:4" in msg and "data.tset_fraction" in msg and "unknown field" in msg


def test_missing_required_field(tmp_path: Path) -> None:
    p = tmp_path / "task.yaml"
    p.write_text("data:\n  path: d.jsonl\n")
    with pytest.raises(ConfigError, match="'name': required field is missing"):
        load_task(p)


def test_invalid_yaml_names_line(tmp_path: Path) -> None:
    p = tmp_path / "task.yaml"
    p.write_text("name: x\ndata:\n  path: [d.jsonl\n")
    with pytest.raises(ConfigError, match=r"task.yaml:\d+: invalid YAML"):
        load_task(p)


def test_bad_target_and_data_source(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="target"):
        Task.model_validate  # noqa: B018 - keep import used
        from rungwise.config.task import task_from_dict

        task_from_dict({"name": "x", "data": {"path": "a"}, "target": "good enough"})
    from rungwise.config.task import task_from_dict

    with pytest.raises(ConfigError, match="either `path` or `train`"):
        task_from_dict({"name": "x", "data": {"path": "a", "train": "b", "test": "c"}})
    with pytest.raises(ConfigError, match="model.base_url"):
        task_from_dict({"name": "x", "data": {"path": "a"}, "model": {"backend": "openai"}})


def test_config_hash_changes_with_config(tmp_path: Path) -> None:
    from rungwise.config.task import task_from_dict

    a = task_from_dict({"name": "x", "data": {"path": "a"}})
    b = task_from_dict({"name": "x", "data": {"path": "a", "seed": 2}})
    assert a.config_hash() != b.config_hash()
    assert a.config_hash() == task_from_dict({"name": "x", "data": {"path": "a"}}).config_hash()


def _error_of(tmp_path: Path, yaml_text: str) -> str:
    p = tmp_path / "task.yaml"
    p.write_text(yaml_text, encoding="utf-8")
    with pytest.raises(ConfigError) as e:
        load_task(p)
    return str(e.value)


@pytest.mark.parametrize(
    "target, expected",
    [
        ("accuracy >= 1.5", "can never be met: accuracy lies between 0 and 1"),
        ("accuracy >= 85", "or a percentage (accuracy >= 85%)"),
        ("accuracy > 100%", "can never be met"),
        ("accuracy >= 0", "is met by any score"),
    ],
)
def test_a_target_no_score_can_meet_or_miss(tmp_path: Path, target: str, expected: str) -> None:
    msg = _error_of(tmp_path, f"name: x\ndata:\n  path: d.jsonl\ntarget: {target}\n")
    assert "task.yaml:4: field 'target'" in msg and expected in msg, msg


def test_reachable_targets_load(tmp_path: Path) -> None:
    for target in ("accuracy >= 1", "accuracy >= 100%", "accuracy > 0", "accuracy >= 0.9"):
        (tmp_path / "task.yaml").write_text(f"name: x\ndata:\n  path: d.jsonl\ntarget: {target}\n")
        assert load_task(tmp_path).parsed_target is not None


def test_an_empty_label_is_an_error(tmp_path: Path) -> None:
    msg = _error_of(tmp_path, 'name: x\ndata:\n  path: d.jsonl\nlabels: [a, b, ""]\n')
    assert "labels[2] is empty" in msg


def test_yaml_booleans_and_numbers_in_labels_say_to_quote_them(tmp_path: Path) -> None:
    msg = _error_of(tmp_path, "name: x\ndata:\n  path: d.jsonl\nlabels:\n  - maybe\n  - no\n  - on\n  - 1.10\n")
    assert "task.yaml:6: field 'labels.1': YAML read no as a boolean (false), not as text" in msg
    assert 'quote it to keep it as written: "no"' in msg
    assert "task.yaml:7: field 'labels.2': YAML read on as a boolean (true)" in msg
    assert "task.yaml:8: field 'labels.3': YAML read 1.10 as a number (1.1)" in msg


def test_labels_that_differ_only_in_unicode_form_show_code_points(tmp_path: Path) -> None:
    msg = _error_of(tmp_path, "name: x\ndata:\n  path: d.jsonl\nlabels: [caf\u00e9, tea, cafe\u0301]\n")
    assert "labels[2]" in msg and "U+0301 COMBINING ACUTE ACCENT vs U+00E9 LATIN SMALL LETTER E WITH ACUTE" in msg


def test_check_rung_order() -> None:
    from rungwise.config.task import check_rung_order

    assert check_rung_order(["zero_shot"]) == ["zero_shot"]
    with pytest.raises(ValueError, match="is empty, so a climb would measure nothing"):
        check_rung_order([])
    with pytest.raises(ValueError, match="names few_shot more than once"):
        check_rung_order(["few_shot", "zero_shot", "few_shot"])
