from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import write_jsonl
from rungwise.data.loaders import load_examples
from rungwise.errors import DataError


def test_jsonl_input_output(tmp_path: Path) -> None:
    p = write_jsonl(tmp_path / "d.jsonl", [{"input": "a", "output": "b", "extra": 1}, {"input": "c", "output": {"k": 1}}])
    ex = load_examples(p)
    assert [(e.input, e.output) for e in ex] == [("a", "b"), ("c", '{"k": 1}')]
    assert ex[0].source == f"{p}:1" and ex[0].metadata == {"extra": 1}


def test_chat_last_assistant_is_output(tmp_path: Path) -> None:
    msgs = [{"role": "system", "content": "s"}, {"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
            {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"}]
    p = write_jsonl(tmp_path / "c.jsonl", [{"messages": msgs}])
    (e,) = load_examples(p)
    assert e.output == "a2" and e.input == "q2"
    assert [m["role"] for m in e.chat()] == ["system", "user", "assistant", "user"]


def test_alpaca(tmp_path: Path) -> None:
    p = write_jsonl(tmp_path / "a.jsonl", [{"instruction": "Translate", "input": "hi", "output": "salut"}, {"instruction": "Say hi", "output": "hi"}])
    a, b = load_examples(p)
    assert a.input == "Translate\n\nhi" and a.output == "salut" and b.input == "Say hi"


def test_csv_named_columns_with_quoted_newlines(tmp_path: Path) -> None:
    p = tmp_path / "d.csv"
    p.write_text('text,category\n"line one,\nline two",billing\nplain,bug\n', encoding="utf-8")
    ex = load_examples(p, input_field="text", output_field="category")
    assert [e.output for e in ex] == ["billing", "bug"] and ex[0].input == "line one,\nline two"
    assert ex[1].source.endswith(":4")


def test_malformed_jsonl_line(tmp_path: Path) -> None:
    p = tmp_path / "d.jsonl"
    p.write_text('{"input": "a", "output": "b"}\n{"input": "a", "output": \n')
    with pytest.raises(DataError, match=rf"{p.name}:2: malformed JSON"):
        load_examples(p)


def test_missing_field_names_line_and_field(tmp_path: Path) -> None:
    p = write_jsonl(tmp_path / "d.jsonl", [{"input": "a", "output": "b"}, {"input": "a", "label": "b"}])
    with pytest.raises(DataError) as e:
        load_examples(p)
    assert f"{p}:2: missing field 'output'" in str(e.value) and "data.columns" in str(e.value)


def test_empty_file(tmp_path: Path) -> None:
    p = tmp_path / "d.jsonl"
    p.write_text("\n\n")
    with pytest.raises(DataError, match="no examples"):
        load_examples(p)


def test_non_utf8_names_line(tmp_path: Path) -> None:
    p = tmp_path / "d.jsonl"
    p.write_bytes(b'{"input": "a", "output": "b"}\n{"input": "caf\xe9", "output": "b"}\n')
    with pytest.raises(DataError, match=r"d.jsonl:2: not valid UTF-8") as e:
        load_examples(p)
    assert "iconv" in str(e.value)


def test_chat_must_end_with_assistant(tmp_path: Path) -> None:
    p = write_jsonl(tmp_path / "c.jsonl", [{"messages": [{"role": "user", "content": "q"}]}])
    with pytest.raises(DataError, match="last message must be the assistant"):
        load_examples(p)
    p = write_jsonl(tmp_path / "c2.jsonl", [{"messages": [{"role": "robot", "content": "q"}, {"role": "assistant", "content": "a"}]}])
    with pytest.raises(DataError, match="role is 'robot'"):
        load_examples(p)


def test_csv_missing_column_and_ragged_row(tmp_path: Path) -> None:
    p = tmp_path / "d.csv"
    p.write_text("text,label\na,b\n")
    with pytest.raises(DataError, match="no column 'category'"):
        load_examples(p, input_field="text", output_field="category")
    p.write_text("text,label\na,b\nc\n")
    with pytest.raises(DataError, match=r"d.csv:3: expected 2 columns"):
        load_examples(p, input_field="text", output_field="label")


def test_wrong_type_and_missing_file(tmp_path: Path) -> None:
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps({"input": True, "output": "x"}) + "\n")
    with pytest.raises(DataError, match="must be text"):
        load_examples(p)
    with pytest.raises(DataError, match="no such data file"):
        load_examples(tmp_path / "nope.jsonl")


@pytest.mark.parametrize("sep", ["\u2028", "\u2029", "\u0085"])
def test_jsonl_keeps_raw_line_separators_inside_strings(tmp_path: Path, sep: str) -> None:
    """json.dumps(ensure_ascii=False) writes these raw; only a newline ends a JSONL record."""
    rows = [{"input": f"first{sep}part", "output": "a"}, {"input": "second", "output": f"b{sep}c"}, {"input": "third", "output": "d"}]
    p = tmp_path / "d.jsonl"
    p.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    ex = load_examples(p)
    assert [(e.input, e.output) for e in ex] == [(r["input"], r["output"]) for r in rows]
    assert [e.source.rsplit(":", 1)[1] for e in ex] == ["1", "2", "3"]


def test_headerless_csv_is_told_to_add_a_header(tmp_path: Path) -> None:
    p = tmp_path / "d.csv"
    p.write_text("How do I reset my password,account\nMy card was charged twice,billing\n", encoding="utf-8")
    with pytest.raises(DataError) as e:
        load_examples(p)
    msg = str(e.value)
    assert "d.csv:1: no column 'input', 'output' in the header row (it reads: 'How do I reset my password'" in msg
    assert "the file has no header: add a first line naming the columns, e.g. 'input,output'" in msg


def test_unclosed_csv_quote_is_reported_where_it_opens(tmp_path: Path) -> None:
    p = tmp_path / "d.csv"
    p.write_text('input,output\nhello,a\n"oops,b\nthird,c\nfourth,d\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"d.csv:3: a quoted field opened on this line is never closed, so lines 3-5"):
        load_examples(p)
    # a quote in the last column swallows the rest of the file with the right column count
    p.write_text('input,output\nhello,a\nthird,"c\nfourth,d\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"d.csv:3: a quoted field opened on this line is never closed"):
        load_examples(p)
    # a record that spans lines legitimately is located where it starts
    p.write_text('input,output\n\n"two\nlines",a\nnext,b\n', encoding="utf-8")
    assert [e.source.rsplit(":", 1)[1] for e in load_examples(p)] == ["3", "5"]


def test_a_label_in_another_unicode_form_shows_its_code_points(tmp_path: Path) -> None:
    from rungwise.config.task import task_from_dict
    from rungwise.data.dataset import load_split

    rows = [{"input": f"q{i}", "output": ["caf\u00e9", "tea"][i % 2]} for i in range(10)]
    rows[6]["output"] = "cafe\u0301"  # NFD: prints exactly like the label
    write_jsonl(tmp_path / "d.jsonl", rows)
    task = task_from_dict({"name": "x", "data": {"path": "d.jsonl"}, "labels": ["caf\u00e9", "tea"]}, base_dir=tmp_path)
    with pytest.raises(DataError) as e:
        load_split(task)
    assert "d.jsonl:7: label" in str(e.value)
    assert "(U+0301 COMBINING ACUTE ACCENT vs U+00E9 LATIN SMALL LETTER E WITH ACUTE)" in str(e.value)


def test_a_train_split_with_one_label_warns(tmp_path: Path) -> None:
    from rungwise.config.task import task_from_dict
    from rungwise.data.dataset import load_split

    write_jsonl(tmp_path / "train.jsonl", [{"input": f"q{i}", "output": "billing"} for i in range(6)])
    write_jsonl(tmp_path / "test.jsonl", [{"input": "t1", "output": "bug"}, {"input": "t2", "output": "billing"}])
    data = {"train": "train.jsonl", "test": "test.jsonl"}
    split = load_split(task_from_dict({"name": "x", "data": data, "labels": ["billing", "bug"]}, base_dir=tmp_path))
    assert len(split.warnings) == 1 and "6 examples all have label 'billing'" in split.warnings[0]
    assert "can only learn to answer 'billing'" in split.warnings[0]
    write_jsonl(tmp_path / "train.jsonl", [{"input": f"q{i}", "output": ["billing", "bug"][i % 2]} for i in range(6)])
    assert load_split(task_from_dict({"name": "x", "data": data, "labels": ["billing", "bug"]}, base_dir=tmp_path)).warnings == []


def test_a_python_reader_turns_any_file_into_examples(tmp_path: Path) -> None:
    from rungwise.config.task import task_from_dict
    from rungwise.data.audit import audit
    from rungwise.data.dataset import load_split
    from rungwise.errors import ConfigError, DataError

    (tmp_path / "nested.json").write_text(json.dumps({"groups": [{"q": f"question {i}", "a": ["yes", "no"][i % 2],
                                                                   "doc": f"d{i % 3}"} for i in range(20)]}))
    (tmp_path / "my_reader.py").write_text(
        "import json\n"
        "def read(path):\n"
        "    for g in json.loads(path.read_text())['groups']:\n"
        "        yield {'input': g['q'], 'output': g['a'], 'gold_doc_ids': [g['doc']], 'extra': 1}\n"
        "def broken(path):\n"
        "    raise KeyError('groups')\n"
    )
    task = task_from_dict({"name": "x", "data": {"path": "nested.json", "format": "python:my_reader:read"},
                           "labels": ["yes", "no"]}, base_dir=tmp_path)
    split = load_split(task)
    ex = split.train[0]
    assert len(split.train) + len(split.test) == 20 and ex.gold_doc_ids and ex.metadata == {"extra": 1}
    assert ex.source.startswith(str(tmp_path / "nested.json") + "#")
    assert audit(task=task).verdict in ("ready", "ready_with_warnings", "not_ready")
    bad = task.model_copy(update={"data": task.data.model_copy(update={"format": "python:my_reader:broken"})})
    with pytest.raises(DataError, match=r"the reader python:my_reader:broken raised KeyError"):
        load_split(bad)
    with pytest.raises(ConfigError, match="unknown format 'xml'"):
        task_from_dict({"name": "x", "data": {"path": "nested.json", "format": "xml"}}, base_dir=tmp_path)
