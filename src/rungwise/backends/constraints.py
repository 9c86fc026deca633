"""Whether an answer satisfies a :class:`~rungwise.types.Constraint`.

Backends that cannot see inside the decoder (a remote endpoint, a script) check every
constrained answer with :func:`allows`, so that a constraint that was silently ignored is caught
on the first answer that breaks it instead of being measured as if it had been enforced.
"""

from __future__ import annotations

import json
import re

from rungwise.types import Constraint


def allows(constraint: Constraint, text: str) -> bool:
    """True when ``text`` is an answer ``constraint`` allows: one of the choices, a full match of
    the pattern, or JSON that parses and conforms to the schema (any JSON object without one).

    >>> allows(Constraint("regex", pattern=r"\\d+"), "42"), allows(Constraint("json"), "[1]")
    (True, False)
    """
    if constraint.kind == "choice":
        return text in constraint.choices
    if constraint.kind == "regex":
        flags = re.IGNORECASE if constraint.ignore_case else 0
        return re.fullmatch(constraint.pattern or "", text, flags) is not None
    try:
        value = json.loads(text)
    except ValueError:
        return False
    if constraint.json_schema is None:
        return isinstance(value, dict)
    from jsonschema.validators import validator_for  # imported here: keeps `import rungwise` light

    schema = json.loads(constraint.json_schema)
    return bool(validator_for(schema)(schema).is_valid(value))
