"""Indirect-object identification (IOI) prompt pairs for activation patching.

``data/ioi_task.json`` holds templates with ``{A}``, ``{B}``, ``{C}`` slots
and a list of names. A clean prompt repeats the subject B at C ("When Mary
and John went to the store, John gave a drink to" → Mary); the corrupted
prompt repeats A instead (→ John), so each pair differs in exactly one token.
The file's ``roles`` name positions counted from the end (END, S2); every
pair is checked against S2 on the model's own tokenizer.

``ioi_splits`` deals the templates and the names out to train, validation
and test (``interp.protocol.split_groups``), as the paper's official code
keeps its DAS training and test distributions apart (names halved, templates
2 vs the rest): no template and no name appears in two splits.

Example:
    task = ioi_task(model, n=16)
    task.clean[0], task.corrupted[0], task.answers[0], task.roles
    tasks, info = ioi_splits(model, n=32, seed=0)   # tasks["train"], tasks["val"], tasks["test"]
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from ..errors import InterpError
from ..protocol import Splits, split_groups
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


def _spec(model, path: str | Path | None) -> tuple[dict, list[str]]:
    """The task file and its names that are single tokens for this tokenizer."""
    try:
        spec = json.loads(Path(path or IOI_PATH).read_text())
    except OSError as e:
        raise InterpError(f"cannot read the task file {path}: {e.strerror}; pass a JSON file with 'names' and "
                          f"'templates' (see data/ioi_task.json)") from None
    names = [m for m in spec["names"] if len(model.tokenizer.encode(" " + m, add_special_tokens=False)) == 1]
    if len(names) < 2:
        raise InterpError("fewer than two names are single tokens for this tokenizer")
    return spec, names


def _pairs(model, spec: dict, names: list[str], templates: list[str], n: int, rng: random.Random) -> PatchTask:
    """``n`` pairs from these names and templates (templates in turn), each checked against the S2 role."""
    clean, corrupted, answers = [], [], []
    for i in range(n):
        a, b = rng.sample(names, 2)
        t = templates[i % len(templates)]
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


def ioi_task(model, n: int = 32, seed: int = 0, path: str | Path | None = None) -> PatchTask:
    """``n`` IOI pairs from ``path`` (default ``data/ioi_task.json``), using names that are single tokens."""
    spec, names = _spec(model, path)
    return _pairs(model, spec, names, spec["templates"], n, random.Random(seed))


def ioi_splits(model, n: int = 32, seed: int = 0, path: str | Path | None = None,
               fractions: tuple[float, float, float] = (0.5, 0.25, 0.25)) -> tuple[dict[str, PatchTask], dict]:
    """Train/validation/test IOI tasks whose templates and names are disjoint across splits.

    Templates and single-token names are each split three ways by ``fractions``
    (``split_groups``, shuffled with ``seed``); split s gets ``fractions[s]·n``
    pairs (at least one) drawn from its own names and templates. Returns the
    tasks and ``{"splits": Splits over the n pairs, "templates": {split: [...]},
    "names": {split: [...]}}``.
    """
    spec, names = _spec(model, path)
    templates = spec["templates"]
    if len(templates) < 3 or len(names) < 6:
        raise InterpError(f"splitting by template and name needs at least 3 templates and 6 single-token names, "
                          f"got {len(templates)} and {len(names)}; pass split_by='pair' or a bigger task file")
    t_split = split_groups(range(len(templates)), fractions, seed, unit="template")
    n_split = split_groups(range(len(names)), fractions, seed, unit="name")
    if min(len(n_split.train), len(n_split.val), len(n_split.test)) < 2:
        raise InterpError("each split needs at least two names; give a task file with more names")
    rng = random.Random(seed)
    counts = {"val": max(1, round(fractions[1] * n)), "test": max(1, round(fractions[2] * n))}
    counts["train"] = n - counts["val"] - counts["test"]
    if counts["train"] < 1:
        raise InterpError(f"{n} pairs are too few for the fractions {fractions}")
    tasks, info = {}, {"templates": {}, "names": {}}
    for s in ("train", "val", "test"):
        ts, ns = t_split.take(templates, s), n_split.take(names, s)
        tasks[s] = _pairs(model, spec, ns, ts, counts[s], rng)
        info["templates"][s], info["names"][s] = ts, ns
    idx = list(range(n))
    info["splits"] = Splits(idx[:counts["train"]], idx[counts["train"]:counts["train"] + counts["val"]],
                            idx[counts["train"] + counts["val"]:], unit="template and name", seed=seed,
                            groups={s: len(info["templates"][s]) for s in ("train", "val", "test")})
    return tasks, info
