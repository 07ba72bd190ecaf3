"""Contrast pairs for steering: a prompt with a reply that shows a behaviour and one that shows its opposite.

``data/steering_yes_no.jsonl`` is the shipped set; ``interp.experiments.steering`` turns pairs into
steering vectors (and re-exports ``Pair`` and ``read_pairs``).

Example:
    >>> Pair("Is ice cold?", "Yes", "No").positive
    'Yes'
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import InterpError
from .jsonl import iter_jsonl

__all__ = ["Pair", "read_pairs"]

PAIR_EXAMPLE = '{"prompt": "...", "positive": "...", "negative": "..."}'


@dataclass(frozen=True)
class Pair:
    """One contrast pair: a prompt and the reply that shows the behaviour (positive) or its opposite."""

    prompt: str
    positive: str
    negative: str


def read_pairs(path: str | Path) -> list[Pair]:
    """Read a JSONL pairs file: one ``{"prompt", "positive", "negative"}`` object per line (blank lines skipped,
    other keys ignored).

    Example:
        >>> import tempfile, os
        >>> f = os.path.join(tempfile.mkdtemp(), "p.jsonl")
        >>> _ = open(f, "w").write('{"prompt": "Is ice cold?", "positive": "Yes", "negative": "No"}\\n')
        >>> read_pairs(f)
        [Pair(prompt='Is ice cold?', positive='Yes', negative='No')]
    """
    path = Path(path)
    if not path.is_file():
        raise InterpError(f"pairs file {path} does not exist; pass a JSONL file with one {PAIR_EXAMPLE} object "
                          f"per line")
    pairs = []
    for n, rec in iter_jsonl(path, example=PAIR_EXAMPLE):
        bad = [k for k in ("prompt", "positive", "negative") if not isinstance(rec.get(k), str) or not rec[k].strip()]
        if bad:
            raise InterpError(f"{path}:{n} needs non-empty strings for {', '.join(bad)}")
        if rec["positive"].strip() == rec["negative"].strip():
            raise InterpError(f"{path}:{n}: positive and negative are the same text ({rec['positive']!r})")
        pairs.append(Pair(rec["prompt"], rec["positive"], rec["negative"]))
    if not pairs:
        raise InterpError(f"{path} holds no pairs")
    return pairs
