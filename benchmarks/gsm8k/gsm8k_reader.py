"""GSM8K as {input, output}: the question, and the worked solution ending in ``#### <answer>``.

The solutions carry calculator annotations (``16 - 3 - 4 = <<16-3-4=9>>9``) written for the
dataset's original tool-using setup; they are taken out, so a demo or a training target shows the
plain arithmetic a model is asked to write. The numeric metric reads the number after ``####``.
The data stays in ../shared/datasets.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

_CALC = re.compile(r"<<[^>]*>>")


def solution(answer: str) -> str:
    """The worked solution without calculator annotations.

    >>> solution("16 - 3 - 4 = <<16-3-4=9>>9 eggs.\\n#### 9")
    '16 - 3 - 4 = 9 eggs.\\n#### 9'
    """
    return _CALC.sub("", answer)


def read(path: Path) -> Iterator[dict]:
    """One example per line of a GSM8K JSONL file (the reader of ``data.format``)."""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                rec = json.loads(line)
                yield {"input": rec["question"], "output": solution(rec["answer"]), "source": f"{Path(path).name}:{n}"}
