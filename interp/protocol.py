"""Choose on validation, report on test, once: the split every experiment uses.

Data are split three ways by *group* (a prompt, an entity, a pair, an image, a passage: never by
token), so no group lands on two sides. Every choice (layer, position, rank, α, heads, candidate) is
made on ``val``; ``test`` is read once at the end for the reported numbers. ``protocol_block`` is
what ``report.json`` carries under ``"protocol"``; ``seed_sweep`` runs an experiment per seed and
``seed_summary`` turns the runs into mean ± spread.

Example:
    >>> s = split_groups(["a", "a", "b", "c", "d", "e"], fractions=(0.5, 0.25, 0.25), seed=0, unit="entity")
    >>> sorted(s.train + s.val + s.test) == list(range(6))
    True
    >>> protocol_block(s)["selected_on"]
    'validation'
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Callable, Hashable, Mapping, Sequence

from .errors import InterpError


@dataclass
class Splits:
    """Indices of the items in each split, and what a group is."""

    train: list[int]
    val: list[int]
    test: list[int]
    unit: str = "prompt"
    seed: int = 0
    groups: dict[str, int] = field(default_factory=dict)  # number of groups per split

    def take(self, items: Sequence, split: str) -> list:
        """The items of one split, in order: ``splits.take(prompts, "val")``."""
        return [items[i] for i in getattr(self, split)]


def split_groups(groups: Sequence[Hashable], fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
                 seed: int = 0, unit: str = "prompt") -> Splits:
    """Split items three ways so that all items of a group share a side.

    ``groups[i]`` names item i's group (pass ``range(n)`` when every item is its own group). Groups
    are shuffled with ``seed`` and dealt out by ``fractions`` of the number of groups; each split
    gets at least one group.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise InterpError(f"fractions must be three non-negative numbers summing to 1, got {fractions}")
    order: dict[Hashable, list[int]] = {}
    for i, g in enumerate(groups):
        order.setdefault(g, []).append(i)
    names = list(order)
    if len(names) < 3:
        raise InterpError(f"need at least 3 distinct {unit}s to split into train/validation/test, got {len(names)}")
    random.Random(seed).shuffle(names)
    n = len(names)
    n_val = max(1, round(fractions[1] * n))
    n_test = max(1, round(fractions[2] * n))
    n_train = n - n_val - n_test
    if n_train < 1:
        raise InterpError(f"{n} {unit}s are too few for the fractions {fractions}; give more data")
    parts = names[:n_train], names[n_train:n_train + n_val], names[n_train + n_val:]
    idx = [sorted(i for g in part for i in order[g]) for part in parts]
    return Splits(idx[0], idx[1], idx[2], unit, seed, {"train": len(parts[0]), "val": len(parts[1]),
                                                       "test": len(parts[2])})


def protocol_block(splits: Splits, selected_on: str = "validation", **extra) -> dict:
    """The ``protocol`` entry of ``report.json``: split unit and sizes, where choices were made, the seed."""
    block = {"split_unit": splits.unit, "n_train": len(splits.train), "n_val": len(splits.val),
             "n_test": len(splits.test), "selected_on": selected_on, "seed": splits.seed}
    if splits.groups:
        block["groups"] = dict(splits.groups)
    block.update(extra)
    return block


def seed_summary(values: Mapping[int, float | None]) -> dict:
    """Mean ± spread of one headline number over seeds: ``{"mean", "std", "min", "max", "n", "per_seed"}``."""
    xs = [float(v) for v in values.values() if v is not None and not math.isnan(float(v))]
    if not xs:
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0, "per_seed": dict(values)}
    mean = sum(xs) / len(xs)
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return {"mean": mean, "std": std, "min": min(xs), "max": max(xs), "n": len(xs), "per_seed": dict(values)}


def seed_sweep(run_one: Callable, model, config, out=None, *, varies: str = "split",
               extra: Callable[[dict], dict] | None = None):
    """Run an experiment once per seed in ``config.seeds``; headlines become mean ± spread over seeds.

    ``run_one(model, config, out)`` is the experiment's own ``run``; each seed runs with
    ``config.seed = s`` (and ``seeds=None``) and writes its own report under ``out/seed_<s>``.
    ``report["seeds"]`` holds ``seed_summary`` of every numeric headline (plus ``extra(runs)``); the
    first seed's report supplies everything else. ``varies`` says what a seed changes, for the reader.
    """
    from dataclasses import replace
    from pathlib import Path

    from .report import Headline, Result, write_report

    seeds = [int(s) for s in config.seeds]
    runs = {s: run_one(model, replace(config, seed=s, seeds=None), None if out is None else Path(out) / f"seed_{s}")
            for s in seeds}
    first = runs[seeds[0]]
    summaries, headlines = {}, []
    for h in first.headlines:
        values = {s: next((x.value for x in runs[s].headlines if x.name == h.name), None) for s in seeds}
        if not all(v is None or isinstance(v, (int, float)) and not isinstance(v, bool) for v in values.values()):
            continue
        summ = summaries[h.name] = seed_summary(values)
        if summ["mean"] is None:
            continue
        per_seed = ", ".join(f"{s}: {'–' if v is None else f'{v:.3f}'}" for s, v in values.items())
        headlines.append(Headline(h.name, summ["mean"], f"{h.split}; mean over seeds {seeds}", target=h.target,
                                  paper=h.paper, note=f"± {summ['std']:.3f} (sd over {summ['n']} seeds; range "
                                  f"{summ['min']:.3f}..{summ['max']:.3f}); per seed: {per_seed}"))
    report = dict(first.report, seeds={"seeds": seeds, "headlines": summaries, **(extra(runs) if extra else {})})
    timing = {f"seed {s}": r.timing.get("total_s", round(sum(v for v in r.timing.values()
                                                               if isinstance(v, (int, float))), 2))
              for s, r in runs.items()}
    result = Result(first.experiment, report, figures=first.figures, headlines=headlines,
                    conclusion=f"Over seeds {seeds} (each: another {varies}). First seed: {first.conclusion}",
                    config=config, timing=timing, tables=first.tables, title=first.title,
                    protocol=dict(first.protocol or {}, seeds=seeds))
    if out is not None:
        write_report(result, out, model=model)
    return result
