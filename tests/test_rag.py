"""The knowledge rungs: rag climbs on facts present only in documents, reports retrieval quality
and traces, is served behind the OpenAI-compatible API; hybrid reuses the fine-tuned model or
is skipped with the reason."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from helpers import write_jsonl
from rungwise.backends.scripted import ScriptedBackend
from rungwise.climb import climb
from rungwise.config.task import load_task
from rungwise.errors import ConfigError, DataError
from rungwise.store import Store
from rungwise.types import Chat

ITEMS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliett", "kilo",
         "lima", "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango", "uniform", "victor",
         "whiskey", "xray", "yankee", "zulu"]
CODES = ["kiwi", "plum", "fig", "lime", "pear", "date", "yuzu", "sloe", "mango", "guava", "quince", "lychee", "olive",
         "melon", "apricot", "cherry", "grape", "lemon", "peach", "prune", "raisin", "banana", "papaya", "nectarine",
         "orange", "apple"]


def _reader(chat: Chat) -> str:
    """A 'model' that can only answer from passages in its prompt, citing the passage it used."""
    text = chat[-1]["content"]
    item = re.search(r"secret code of (\w+)\?", text)
    for ref, passage in re.findall(r"\[(p\d+)\][^\n]* (The secret code of \w+ is \w+\.)", text):
        if item and f"of {item.group(1)} is" in passage:
            return passage.rsplit(" ", 1)[1].rstrip(".") + f" [{ref}]"
    return "unknown"


def _task(tmp_path: Path, order: list[str], **over: Any) -> Path:
    kb = tmp_path / "kb"
    kb.mkdir(exist_ok=True)
    for item, code in zip(ITEMS, CODES, strict=True):
        (kb / f"{item}.md").write_text(f"# {item.title()}\n\nThe secret code of {item} is {code}.\n")
    write_jsonl(tmp_path / "data.jsonl", [
        {"input": f"What is the secret code of {item}?", "output": code, "gold_doc_ids": [f"{item}.md"]}
        for item, code in zip(ITEMS, CODES, strict=True)
    ])
    task = {
        "name": "codes",
        "data": {"path": "data.jsonl", "test_fraction": 0.35, "seed": 3},
        "instructions": "Answer with the secret code only.",
        "metric": "exact_match",
        "target": "exact_match >= 0.8",
        "knowledge": {"path": "kb"},
        "model": {"backend": "scripted"},
        "rungs": {"order": order, "rag": {"mode": "bm25", "k": 2}, "hybrid": {"mode": "bm25", "k": 2}},
        **over,
    }
    p = tmp_path / "task.yaml"
    p.write_text(yaml.safe_dump(task, sort_keys=False))
    return p


def test_rag_answers_facts_only_in_documents_and_reports_retrieval(tmp_path: Path) -> None:
    task = load_task(_task(tmp_path, ["zero_shot", "rag"]))
    res = climb(task, all_rungs=True, backend=ScriptedBackend(_reader))
    zero, rag = res.rungs
    assert zero.metric.value == 0.0 and rag.metric.value == 1.0
    assert rag.comparison is not None and rag.comparison.significant and rag.kind.retrieves
    # zero-shot's failures are all valid-but-wrong answers: knowledge, not behaviour
    assert zero.failures["behaviour"] == 0 and zero.failures["knowledge"] == zero.metric.n
    assert res.verdict is not None and res.verdict.recommended == "rag"
    # retrieval measured against the gold documents, per retriever
    art = rag.artifact
    assert art["retrieval"]["bm25"]["recall@1"] == 1.0 and art["retrieval_n"] == zero.metric.n
    assert art["groundedness"] == 1.0 and any("recall@5" in n for n in rag.notes)
    # per-example traces in the run store: retrieved chunks with scores, the gold hit, the citation
    rows = list(Store().predictions(rag.id).values())
    import json

    trace = json.loads(rows[0]["trace_json"])
    assert trace["gold_retrieved"] is True and trace["retrieved"][0]["ref"] == "p1"
    assert trace["cited"] == [trace["retrieved"][0]["id"]] and "[p" not in rows[0]["completion"]
    prompt = json.loads(rows[0]["prompt_json"])
    assert prompt[0]["content"].startswith("Answer with the secret code only.")  # the cacheable prefix
    assert prompt[-1]["content"].startswith("Passages:\n[p1]") and prompt[-1]["content"].endswith(rows[0]["input"])


def test_rag_demos_are_shown_with_their_passages_and_a_citation(tmp_path: Path) -> None:
    # A demo in another shape than the question (no passages, no citation) teaches the wrong task.
    path = _task(tmp_path, ["rag"])
    raw = yaml.safe_load(path.read_text())
    raw["rungs"]["rag"]["demos"] = 2
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    task = load_task(path)
    res = climb(task, all_rungs=True, backend=ScriptedBackend(_reader))
    (rag,) = res.rungs
    assert rag.metric.value == 1.0
    import json

    prompt = json.loads(next(iter(Store().predictions(rag.id).values()))["prompt_json"])
    demos = [m["content"] for m in prompt[1:-1]]
    assert len(demos) == 4  # two (user, assistant) pairs
    for question, answer in zip(demos[::2], demos[1::2], strict=True):
        assert question.startswith("Passages:\n[p1]") and "What is the secret code of" in question
        code, ref = answer.split()
        assert ref in ("[p1]", "[p2]") and f"{ref} " in question
        assert re.search(re.escape(ref) + r" [^\n]* is " + code + r"\.", question)  # the cited passage holds it


def test_rag_is_served_with_its_index(tmp_path: Path) -> None:
    from rungwise.backends.openai_compat import OpenAIBackend
    from rungwise.serve import app_for_task, background
    from rungwise.types import GenParams

    task = load_task(_task(tmp_path, ["rag"], model={"backend": "scripted", "script": {"default": "?"}}))
    res = climb(task, backend=ScriptedBackend(_reader))
    app = app_for_task(task, "rag", res.run_id)
    try:
        with background(app) as url:
            OpenAIBackend(url + "/v1", "codes-rag", max_retries=0).generate(
                [[{"role": "user", "content": "What is the secret code of tango?"}]], GenParams())
        sent = app.state.backend.calls[-1]
    finally:
        app.state.close()
    assert "The secret code of tango is prune." in sent[-1]["content"]


def test_hybrid_without_a_finetune_is_skipped_with_the_reason(tmp_path: Path) -> None:
    res = climb(load_task(_task(tmp_path, ["zero_shot", "hybrid"])), all_rungs=True, backend=ScriptedBackend(_reader))
    assert [r.rung for r in res.rungs] == ["zero_shot"]
    assert any(n.startswith("hybrid skipped: needs the finetune rung") for n in res.notes)


def test_retrieving_rungs_need_a_knowledge_source(tmp_path: Path) -> None:
    p = _task(tmp_path, ["zero_shot", "rag"])
    raw = yaml.safe_load(p.read_text())
    del raw["knowledge"]
    p.write_text(yaml.safe_dump(raw, sort_keys=False))
    with pytest.raises(ConfigError, match="rungs rag retrieve from a knowledge source, but the task has none"):
        load_task(p)


def test_a_gold_id_missing_from_the_corpus_names_the_example(tmp_path: Path) -> None:
    p = _task(tmp_path, ["rag"])
    rows = [{"input": f"What is the secret code of {i}?", "output": c, "gold_doc_ids": ["nowhere.md"]}
            for i, c in zip(ITEMS, CODES, strict=True)]
    write_jsonl(tmp_path / "data.jsonl", rows)
    with pytest.raises(DataError, match=r"data.jsonl:\d+: gold id 'nowhere.md' is neither a document nor a chunk"):
        climb(load_task(p), backend=ScriptedBackend(_reader))


@pytest.mark.model
def test_rag_fused_with_the_packaged_embedder_and_hybrid_reuses_the_adapter(tmp_path: Path, tiny_llama_dir: Path) -> None:
    p = _task(tmp_path, ["finetune", "hybrid"], model={"backend": "local", "id": str(tiny_llama_dir), "device": "cpu",
                                                        "dtype": "float32", "params": {"max_tokens": 4}})
    raw = yaml.safe_load(p.read_text())
    raw["rungs"]["finetune"] = {"max_steps": 2, "batch_size": 4, "forgetting": {"enabled": False}}
    raw["rungs"]["hybrid"] = {"mode": "fused", "k": 2}
    p.write_text(yaml.safe_dump(raw, sort_keys=False))
    res = climb(load_task(p), all_rungs=True)
    ft, hy = res.rungs
    assert hy.rung == "hybrid" and hy.artifact["finetune"]["out_dir"] == ft.artifact["out_dir"]
    assert set(hy.artifact["retrieval"]) == {"bm25", "dense", "fused"}
    assert hy.training is not None and hy.training.examples == ft.training.examples  # priced with its training
