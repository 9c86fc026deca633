"""Constrained decoding in the backends: choice scoring, grammar masks, calibration, and the
endpoint path (a real `rungwise serve` app that enforces a constraint, one that rejects it and
one that ignores it, driven through the openai backend).

Real-model plumbing runs on the tiny random Llama of conftest (fp32), whose answers are noise:
that is the point for a grammar, which must hold whatever the model prefers.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request

from rungwise.backends.calibration import CalibratedBackend, ChoiceCalibration, content_free_prompts
from rungwise.backends.constraints import allows
from rungwise.backends.openai_compat import OpenAIBackend, constraint_fields
from rungwise.backends.scripted import ScriptedBackend
from rungwise.errors import BackendError, ConfigError, Unsupported
from rungwise.prompting import PromptTemplate
from rungwise.serve import background, create_app
from rungwise.types import Chat, Constraint, GenParams

LABELS = ("billing", "technical", "account", "shipping")
CHOICE = Constraint("choice", choices=LABELS)
REGEX = Constraint("regex", pattern=r"[A-Z]{2}-\d{3}")
SCHEMA = {
    "type": "object",
    "properties": {"team": {"enum": list(LABELS)}, "urgent": {"type": "boolean"}},
    "required": ["team", "urgent"],
    "additionalProperties": False,
}
JSON = Constraint("json", json_schema=json.dumps(SCHEMA, sort_keys=True))
TEMPLATE = PromptTemplate("Route the ticket to billing, technical, account or shipping. " * 3)
INPUTS = ["I was charged twice", "the app crashes when I open settings", "cannot log in", "parcel never arrived",
          "hello"]


def chats() -> list[Chat]:
    return [TEMPLATE.render([{"role": "user", "content": x}]) for x in INPUTS]


# -- the local backend on a tiny real model -----------------------------------------------------

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir: Path) -> Any:
    from test_local_backend import load_tiny

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_tiny(tiny_llama_dir)
    torch.set_num_threads(n)


def local(tiny: Any, **kw: Any) -> Any:
    from rungwise.backends.local import LocalBackend

    model, tok = tiny
    return LocalBackend(model, tok, model_id="local:tiny", **kw)


def _manual_choice_logprob(tiny: Any, chat: Chat, choice: str) -> float:
    """log p(choice, then the end-of-turn token | prompt), from one plain forward pass."""
    model, tok = tiny
    text = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    ctx = tok(text, add_special_tokens=False)["input_ids"]
    full = tok(text + choice, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([full])).logits[0].float(), -1)
    return float(sum(logp[i - 1, full[i]] for i in range(len(ctx), len(full))))


@pytest.mark.model
def test_choice_is_the_best_label_by_likelihood_up_to_the_end_token(tiny: Any) -> None:
    b = local(tiny, batch_size=2)
    out = b.generate(chats(), GenParams(constraint=CHOICE))
    no_cache = local(tiny, batch_size=3, prefix_cache=False).generate(chats(), GenParams(constraint=CHOICE))
    for chat, c, c2 in zip(chats(), out, no_cache, strict=True):
        scores = c.trace["choice_logprobs"]
        assert list(scores) == list(LABELS) and c.trace["constraint"] == "choice of 4"
        for label in LABELS:
            assert scores[label] == pytest.approx(_manual_choice_logprob(tiny, chat, label), abs=1e-3)
            assert scores[label] == pytest.approx(c2.trace["choice_logprobs"][label], abs=1e-3)
        assert c.text == max(LABELS, key=scores.__getitem__)
        assert c.cached_tokens > 0 and c.prompt_tokens > c.cached_tokens
        assert c.completion_tokens == len(b.tokenizer(c.text, add_special_tokens=False)["input_ids"]) + 1
        assert 0 < c.trace["scored_tokens"] <= sum(c.completion_tokens for _ in LABELS) + 8
    # The end token is what keeps a prefix of a label from winning: "bill" alone is scored too.
    prefix = Constraint("choice", choices=("bill", "billing"))
    scores = b.generate(chats()[:1], GenParams(constraint=prefix))[0].trace["choice_logprobs"]
    assert scores["bill"] == pytest.approx(_manual_choice_logprob(tiny, chats()[0], "bill"), abs=1e-3)


@pytest.mark.model
@pytest.mark.parametrize("constraint", [REGEX, JSON, Constraint("json"), Constraint("regex", pattern="yes|no",
                                                                                          ignore_case=True)],
                         ids=["regex", "json_schema", "json_object", "regex_ignore_case"])
def test_grammar_constraints_hold_whatever_the_model_prefers(tiny: Any, constraint: Constraint) -> None:
    b = local(tiny, batch_size=3)  # batches of 3 and 2 rows, left-padded, behind the prefix cache
    free = b.generate(chats(), GenParams(max_tokens=12, stop=()))
    assert not all(allows(constraint, c.text) for c in free)  # unconstrained, the noise model breaks it
    out = b.generate(chats(), GenParams(max_tokens=40, stop=("\n",), constraint=constraint))
    for c in out:
        assert c.trace["constraint"] == constraint.describe()
        if constraint.json_schema is None and constraint.kind == "json":
            # Any JSON object: the noise model may fill a key until max_tokens; what it wrote is still JSON's start.
            assert c.text.startswith("{"), c.text
            if c.finish_reason == "length":
                continue
        assert c.finish_reason == "stop", c.text  # the grammar completed and the row ended on its end token
        assert allows(constraint, c.text), c.text
    # Sampling (the mask comes before temperature and top-p, which cannot then keep only banned tokens).
    sampled = b.generate(chats(), GenParams(max_tokens=40, temperature=1.3, top_p=0.5, seed=1, constraint=constraint))
    assert all(allows(constraint, c.text) for c in sampled if c.finish_reason == "stop")


@pytest.mark.model
def test_greedy_choice_decodes_through_the_labels_at_generation_cost(tiny: Any) -> None:
    b = local(tiny, batch_size=3)
    greedy = Constraint("choice", choices=LABELS + ("a b?",), choice_method="greedy")
    out = b.generate(chats(), GenParams(max_tokens=1, constraint=greedy))  # max_tokens raised to fit a label
    for c in out:
        assert c.text in greedy.choices and c.finish_reason == "stop"
        assert c.trace == {"constraint": "choice of 5 (greedy)"}  # no per-choice scores: nothing to calibrate


@pytest.mark.model
def test_unconstrained_answers_are_unchanged_by_a_constrained_call(tiny: Any) -> None:
    b = local(tiny, batch_size=2)
    before = [c.text for c in b.generate(chats(), GenParams(max_tokens=8))]
    b.generate(chats(), GenParams(max_tokens=8, constraint=REGEX))
    b.generate(chats(), GenParams(constraint=CHOICE))
    assert [c.text for c in b.generate(chats(), GenParams(max_tokens=8))] == before


@pytest.mark.model
def test_unenforceable_pattern_is_unsupported_before_any_decoding(tiny: Any) -> None:
    b = local(tiny)
    with pytest.raises(Unsupported, match="look-around") as exc:
        b.generate(chats(), GenParams(constraint=Constraint("regex", pattern=r"(?=a)\w+")))
    assert exc.value.hint
    with pytest.raises(BackendError, match="at least one choice"):
        b.generate(chats(), GenParams(constraint=Constraint("choice")))


@pytest.mark.model
def test_contextual_calibration_subtracts_the_content_free_bias(tiny: Any) -> None:
    b = local(tiny)
    cal = ChoiceCalibration.measure(b, content_free_prompts(TEMPLATE.render), CHOICE)
    # The offsets are the log of the mean normalized probability over the three content-free inputs.
    cf = b.generate(content_free_prompts(TEMPLATE.render), GenParams(constraint=CHOICE))
    probs = []
    for c in cf:
        s = [c.trace["choice_logprobs"][x] for x in LABELS]
        z = math.log(sum(math.exp(v) for v in s))
        probs.append([math.exp(v - z) for v in s])
    for i in range(len(LABELS)):
        assert cal.offsets[i] == pytest.approx(math.log(sum(p[i] for p in probs) / len(probs)), abs=1e-6)
    answers = b.generate(chats(), GenParams(constraint=CHOICE))
    calibrated = cal.apply(answers)
    for a, c in zip(answers, calibrated, strict=True):
        cal_scores = c.trace["calibrated_logprobs"]
        assert c.text == max(LABELS, key=cal_scores.__getitem__)
        assert c.prompt_tokens == a.prompt_tokens and c.trace["choice_logprobs"] == a.trace["choice_logprobs"]
    assert ChoiceCalibration.from_dict(json.loads(json.dumps(cal.to_dict()))) == cal
    # Served calibrated: the wrapper recalibrates answers under this choice constraint only.
    served = CalibratedBackend(b, cal)
    assert [c.text for c in served.generate(chats(), GenParams(constraint=CHOICE))] == [c.text for c in calibrated]
    assert served.generate(chats()[:1], GenParams(max_tokens=3))[0].text == b.generate(chats()[:1], GenParams(max_tokens=3))[0].text


# -- the scripted test double -------------------------------------------------------------------


def test_scripted_backend_honours_constraints() -> None:
    b = ScriptedBackend({"a": "technical", "b": "no idea", "default": '{"team": "billing", "urgent": true}'},
                        choice_scores=lambda chat, c: -float(len(c)))
    ask = [[{"role": "user", "content": x}] for x in ("a", "b")]
    out = b.generate(ask, GenParams(constraint=CHOICE))
    assert [c.text for c in out] == ["technical", "billing"]  # the reply if it is a choice, else the best score
    assert out[1].trace["choice_logprobs"] == {label: -float(len(label)) for label in LABELS}
    assert b.generate([[{"role": "user", "content": "z"}]], GenParams(constraint=JSON))[0].text.startswith("{")
    with pytest.raises(BackendError, match="breaks the regex"):
        b.generate(ask[:1], GenParams(constraint=REGEX))
    # Calibration needs per-choice scores: an answer without them says so.
    with pytest.raises(Unsupported, match="each choice's score"):
        ChoiceCalibration(LABELS, (0.0,) * 4).apply(b.generate(ask[:1], GenParams()))


# -- the openai backend's dialects --------------------------------------------------------------


def test_each_dialect_carries_the_constraint_in_its_own_fields() -> None:
    schema = json.loads(JSON.json_schema or "")
    assert constraint_fields(REGEX, "vllm") == ({"structured_outputs": {"regex": REGEX.pattern}}, False)
    assert constraint_fields(JSON, "vllm") == ({"structured_outputs": {"json": schema}}, False)
    assert constraint_fields(CHOICE, "vllm_guided") == ({"guided_choice": list(LABELS)}, False)
    assert constraint_fields(Constraint("json"), "vllm_guided") == ({"response_format": {"type": "json_object"}}, False)
    assert constraint_fields(JSON, "llamacpp") == ({"json_schema": schema}, False)
    assert constraint_fields(Constraint("choice", choices=('say "hi"', "a\\b\n")), "llamacpp")[0] == {
        "grammar": 'root ::= "say \\"hi\\"" | "a\\\\b\\n"'}
    fields, wrapped = constraint_fields(CHOICE, "openai")
    js = fields["response_format"]["json_schema"]
    assert wrapped and js["strict"] is True and js["schema"]["properties"]["answer"]["enum"] == list(LABELS)
    fields, wrapped = constraint_fields(JSON, "ollama")
    assert not wrapped and fields["response_format"]["json_schema"]["schema"] == schema
    assert "strict" not in fields["response_format"]["json_schema"]
    assert constraint_fields(Constraint("regex", pattern="a|b", ignore_case=True), "vllm")[0] == {
        "structured_outputs": {"regex": "(?i:a|b)"}}
    for dialect in ("llamacpp", "ollama", "openai"):
        with pytest.raises(Unsupported, match="unsupported by this endpoint"):
            constraint_fields(REGEX, dialect)
    with pytest.raises(Unsupported, match="structured_outputs: none"):
        constraint_fields(CHOICE, "none")
    with pytest.raises(ConfigError, match="structured_outputs"):
        OpenAIBackend("http://127.0.0.1:1/v1", "m", structured_outputs="tgi")  # type: ignore[arg-type]


class _Rejecting(ScriptedBackend):
    """A backend that cannot enforce any constraint: what `rungwise serve` has over such a model."""

    def generate(self, prompts, params, progress=None):  # type: ignore[no-untyped-def]
        if params.constraint is not None:
            raise Unsupported(f"{self.model_id} cannot enforce the {params.constraint.describe()}")
        return super().generate(prompts, params, progress)


@pytest.fixture(scope="module")
def enforcing(tiny: Any) -> Iterator[tuple[str, Any]]:
    """`rungwise serve` over the tiny model: it enforces every constraint (served rung's prompt applied)."""
    backend = local(tiny, batch_size=4)
    app = create_app(backend, TEMPLATE, "tickets", default_params=GenParams(max_tokens=40, stop=("\n",)))
    with background(app) as url:
        yield url + "/v1", backend


@pytest.mark.model
@pytest.mark.parametrize("dialect", ["auto", "vllm", "vllm_guided", "openai"])
def test_endpoint_that_enforces_the_constraint(enforcing: tuple[str, Any], dialect: str) -> None:
    url, backend = enforcing
    client = OpenAIBackend(url, "tickets", structured_outputs=dialect, concurrency=2)
    ask = [[{"role": "user", "content": x}] for x in INPUTS]
    direct = backend.generate(chats(), GenParams(constraint=CHOICE))
    got = client.generate(ask, GenParams(max_tokens=40, constraint=CHOICE))
    assert client.dialect() == ("vllm" if dialect == "auto" else dialect)  # rungwise serve speaks vLLM's fields
    assert all(c.text in LABELS and c.trace["constraint"] == "choice of 4" for c in got)
    if dialect != "openai":  # vLLM's choice field reaches the local backend's likelihood scoring
        assert [c.text for c in got] == [c.text for c in direct]
    for constraint in ([REGEX, JSON] if dialect != "openai" else [JSON]):
        out = client.generate(ask, GenParams(max_tokens=40, constraint=constraint))
        assert all(allows(constraint, c.text) for c in out), [c.text for c in out]
    client.close()


def test_endpoint_that_rejects_the_constraint_is_unsupported_never_unconstrained() -> None:
    backend = _Rejecting({"default": "billing"})
    app = create_app(backend, TEMPLATE, "tickets")
    with background(app) as url:
        client = OpenAIBackend(url + "/v1", "tickets", structured_outputs="vllm", max_retries=0)
        with pytest.raises(Unsupported, match=r"rejected the choice of 4 constraint \(HTTP 400") as exc:
            client.generate([[{"role": "user", "content": "hi"}]], GenParams(constraint=CHOICE))
        assert "cannot enforce" in str(exc.value) and "unsupported by this endpoint" in (exc.value.hint or "")
        # Without a constraint the same endpoint answers as before.
        assert client.generate([[{"role": "user", "content": "hi"}]], GenParams())[0].text == "billing"
        # The server's own 400 for malformed constraint fields names the field.
        r = httpx.post(url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}],
                                                           "guided_regex": "(", "model": "tickets"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "guided_regex"
        r = httpx.post(url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}],
                                                           "guided_choice": ["a"], "response_format": {"type": "json_object"}})
        assert r.status_code == 400 and "one output constraint" in r.json()["error"]["message"]
        r = httpx.post(url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}],
                                                           "structured_outputs": {"grammar": "root ::= x"}})
        assert r.status_code == 400 and "grammar is not supported" in r.json()["error"]["message"]
        client.close()


def test_endpoint_that_ignores_the_constraint_is_caught_on_its_first_answer() -> None:
    app = FastAPI()
    seen: list[dict[str, Any]] = []

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:  # answers free text whatever the request asks for
        seen.append(await request.json())
        return {"choices": [{"message": {"role": "assistant", "content": "It sounds like billing."},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 4}}

    with background(app) as url:
        client = OpenAIBackend(url + "/v1", "m", structured_outputs="auto", max_retries=0)
        with pytest.raises(Unsupported, match="the endpoint ignored it"):
            client.generate([[{"role": "user", "content": "hi"}]], GenParams(stop=("\n",), constraint=CHOICE))
        # auto: no model list -> the OpenAI dialect; the stop sequence is not sent under a constraint
        assert client.dialect() == "openai" and "response_format" in seen[0] and "stop" not in seen[0]
        client.close()
        llama = OpenAIBackend(url + "/v1", "m", structured_outputs="llamacpp")
        with pytest.raises(Unsupported, match="regex constraint is unsupported"):
            llama.generate([[{"role": "user", "content": "hi"}]], GenParams(constraint=REGEX))
        assert len(seen) == 1  # refused before any request
        llama.close()


def test_constraint_fields_match_the_allows_check() -> None:
    assert allows(CHOICE, "billing") and not allows(CHOICE, "Billing")
    assert allows(REGEX, "AB-123") and not allows(REGEX, "AB-123 ")
    assert allows(Constraint("regex", pattern="yes", ignore_case=True), "YES")
    assert allows(JSON, '{"team": "account", "urgent": false}') and not allows(JSON, '{"team": "x", "urgent": 1}')
    assert allows(Constraint("json"), "{}") and not allows(Constraint("json"), "[]")
