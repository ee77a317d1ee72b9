"""Which zoo cases fail today, and why: each a known gap, marked ``xfail(strict=True)``, so a
case that starts passing fails as XPASS and its mark must go. A case failing for any other
reason is a bug, not an entry here.
"""

from __future__ import annotations

import pytest

from .models import ZOO

# (model, check) -> why it fails today
KNOWN: dict[tuple[str, str], str] = {}


def cases(check: str, only=None) -> list:
    """The zoo's models for ``check`` as pytest params, each known failure marked strict xfail
    with its reason; ``only(entry)`` filters the models."""
    out = []
    for name, entry in ZOO.items():
        if only is not None and not only(entry):
            continue
        reason = KNOWN.get((name, check))
        marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
        out.append(pytest.param(name, id=name, marks=marks))
    return out
