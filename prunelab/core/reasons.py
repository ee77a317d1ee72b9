"""Reasons listed for many layers, said once each: the one way prunelab writes such lists.

``skipped``, ``structured_blocked``, the layers 2:4 cannot take and the errors naming them are
``{name: reason}`` maps. A model of 50 blocks repeats one reason 50 times; a message lists each
distinct reason once, with how many layers share it and a few of their names.
"""

from __future__ import annotations

from typing import Mapping

SHOWN = 3  # names shown per reason before "and N more"


def grouped(reasons: Mapping[str, str]) -> list[tuple[str, list[str]]]:
    """The distinct reasons of ``reasons`` (``{name: reason}``), each with the names that give it,
    most shared first (ties in order of first appearance).

    Args:
        reasons: ``{layer or parameter name: reason}``.

    Returns:
        ``[(reason, [names...]), ...]``.

    Example:
        >>> grouped({"a": "x", "b": "y", "c": "x"})
        [('x', ['a', 'c']), ('y', ['b'])]
    """
    by_reason: dict[str, list[str]] = {}
    for name, reason in reasons.items():
        by_reason.setdefault(str(reason), []).append(str(name))
    return sorted(by_reason.items(), key=lambda item: -len(item[1]))


def summarize(reasons: Mapping[str, str], *, noun: str = "layer", shown: int = SHOWN, sep: str = "; ") -> str:
    """``reasons`` as one short line: each distinct reason once, with its count and a few names.

    Args:
        reasons: ``{name: reason}``.
        noun: what the names are ("layer", "parameter"), for the counts.
        shown: names shown per reason; the rest are counted ("and 54 more").
        sep: between reasons.

    Returns:
        ``"57 layers: <reason> (features.0.conv, features.1.conv, features.2.conv and 54 more); 
        classifier: <reason>"``; a reason given for one name reads ``name: reason``; "" for none.

    Example:
        >>> summarize({"a": "its rows are 6", "b": "its rows are 6", "c": "tied"})
        '2 layers: its rows are 6 (a, b); c: tied'
    """
    parts = []
    for reason, names in grouped(reasons):
        if len(names) == 1:
            parts.append(f"{names[0] or '(the model)'}: {reason}")
            continue
        listed = ", ".join(n or "(the model)" for n in names[:shown])
        more = f" and {len(names) - shown} more" if len(names) > shown else ""
        parts.append(f"{len(names)} {noun}s: {reason} ({listed}{more})")
    return sep.join(parts)
