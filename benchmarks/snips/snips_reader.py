"""SNIPS NLU benchmark as strict-JSON slot extraction: ``{"intent": ..., "slots": {...}}``.

``read(manifest)`` reads the files a manifest names (one glob per line, relative to the
manifest: ``train.files``, ``test.files``) and yields one example per utterance. Each SNIPS
utterance is a list of chunks, some tagged with an ``entity`` (the slot name); the expected
output is the intent and every tagged chunk's text under its slot name, as canonical JSON
(a slot tagged twice in one utterance keeps both values, as a list). The text stays in
../shared/datasets; nothing is copied into the repository.

``train_PlayMusic_full.json`` is not valid UTF-8, and the dataset notes call it Latin-1, but read
as Latin-1 its 31 accented letters turn to mojibake ("MÃºsica"): it is UTF-8 except for one emoji
written as a CESU-8 surrogate pair (bytes ED A0 BC ED BD 95, six times). Such a file is decoded with
the surrogates let through and then paired up, which gives "Música" and the emoji.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path


def _read_json(path: Path) -> dict:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:  # CESU-8 surrogate pairs inside UTF-8: pair them up through UTF-16
        text = raw.decode("utf-8", "surrogatepass").encode("utf-16", "surrogatepass").decode("utf-16")
    return json.loads(text)


def _files(manifest: Path) -> list[Path]:
    patterns = [line.strip() for line in manifest.read_text(encoding="utf-8").splitlines()
                if line.strip() and not line.startswith("#")]
    files = sorted({f for p in patterns for f in manifest.parent.glob(p)})
    if not files:
        raise FileNotFoundError(f"{manifest}: no file matches {', '.join(patterns)} (is ../shared/datasets there?)")
    return files


def utterance(intent: str, chunks: list[dict]) -> dict:
    """One SNIPS utterance as ``{input, output}``: the text, and the strict JSON answer.

    >>> utterance("GetWeather", [{"text": "weather in "}, {"text": "Paris", "entity": "city"}])
    {'input': 'weather in Paris', 'output': '{"intent": "GetWeather", "slots": {"city": "Paris"}}'}
    """
    slots: dict[str, str | list[str]] = {}
    for c in chunks:
        name = c.get("entity")
        if not name:
            continue
        value = c["text"].strip()
        if name in slots:  # the same slot twice in one utterance: keep both values
            prev = slots[name]
            slots[name] = [*prev, value] if isinstance(prev, list) else [prev, value]
        else:
            slots[name] = value
    text = "".join(c["text"] for c in chunks).strip()
    return {"input": text, "output": json.dumps({"intent": intent, "slots": slots}, ensure_ascii=False)}


def read(manifest: Path) -> Iterator[dict]:
    """Every utterance of the files ``manifest`` names (the reader of ``data.format``)."""
    for path in _files(Path(manifest)):
        (intent, utterances), = _read_json(path).items()
        for i, u in enumerate(utterances):
            yield {**utterance(intent, u["data"]), "source": f"{path.name}#{i + 1}"}


def read_intents(manifest: Path) -> Iterator[dict]:
    """The same utterances with the intent alone as the answer (``benchmarks/snips-intents``)."""
    for row in read(manifest):
        yield {**row, "output": json.loads(row["output"])["intent"]}
