"""Indirect-object identification (IOI) prompt pairs for activation patching.

``data/ioi_task.json`` holds templates with ``{A}``, ``{B}``, ``{C}`` slots
and a list of names. A clean prompt repeats the subject B at C ("When Mary
and John went to the store, John gave a drink to" → Mary); the corrupted
prompt repeats A instead (→ John), so each pair differs in exactly one token.
The file's ``roles`` name positions counted from the end (END, S2); every
pair is checked against S2 on the model's own tokenizer.

Example:
    task = ioi_task(model, n=16)
    task.clean[0], task.corrupted[0], task.answers[0], task.roles
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from ..errors import InterpError
from .prompts import DATA_DIR

IOI_PATH = DATA_DIR / "ioi_task.json"


@dataclass
class PatchTask:
    """Clean/corrupted prompt pairs; ``answers[i]`` = (clean answer token, corrupted answer token).

    Example:
        >>> t = PatchTask(["a b", "c d"], ["a c", "c b"], torch.tensor([[1, 2], [3, 4]]))
        >>> t.subset([1]).clean
        ['c d']
    """

    clean: list[str]
    corrupted: list[str]
    answers: torch.Tensor  # [n, 2] token ids
    roles: dict[str, int] | None = None  # named positions from the end, e.g. {"END": -1, "S2": -5}

    def subset(self, idx: Sequence[int]) -> "PatchTask":
        return PatchTask([self.clean[i] for i in idx], [self.corrupted[i] for i in idx], self.answers[list(idx)],
                         self.roles)


def ioi_task(model, n: int = 32, seed: int = 0, path: str | Path | None = None) -> PatchTask:
    """``n`` IOI pairs from ``path`` (default ``data/ioi_task.json``), using names that are single tokens."""
    try:
        spec = json.loads(Path(path or IOI_PATH).read_text())
    except OSError as e:
        raise InterpError(f"cannot read the task file {path}: {e.strerror}; pass a JSON file with 'names' and "
                          f"'templates' (see data/ioi_task.json)") from None
    names = [m for m in spec["names"] if len(model.tokenizer.encode(" " + m, add_special_tokens=False)) == 1]
    if len(names) < 2:
        raise InterpError("fewer than two names are single tokens for this tokenizer")
    rng = random.Random(seed)
    clean, corrupted, answers = [], [], []
    for i in range(n):
        a, b = rng.sample(names, 2)
        t = spec["templates"][i % len(spec["templates"])]
        clean.append(t.format(A=a, B=b, C=b))  # B repeats: the answer is A
        corrupted.append(t.format(A=a, B=b, C=a))  # A repeats: the answer is B
        ids = [model.tokenizer.encode(" " + x, add_special_tokens=False)[0] for x in (a, b)]
        answers.append(ids)
        s2 = (spec.get("roles") or {}).get("S2")
        if s2 is not None:  # a word that splits into several tokens would shift S2 for this template only
            tok_c, tok_x = (model.tokenizer.encode(x, add_special_tokens=False) for x in (clean[-1], corrupted[-1]))
            where = [j - len(tok_c) for j in range(min(len(tok_c), len(tok_x))) if tok_c[j] != tok_x[j]]
            if len(tok_c) != len(tok_x) or where != [s2]:
                raise InterpError(f"template {t!r}: the pair differs at positions {where} from the end, not at "
                                  f"S2 = {s2} as 'roles' says; a word after {{C}} is probably several tokens")
    return PatchTask(clean, corrupted, torch.tensor(answers), spec.get("roles"))
