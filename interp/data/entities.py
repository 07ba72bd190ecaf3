"""Entity tables and the prompts that ask about their numeric attributes (El-Shangiti et al.).

The tables live in ``data/entities/*.csv`` (built by ``scripts/build_entity_tables.py``; sources in
``data/README.md``): people (birth and death years), cities (latitude, longitude, population), countries
(population, area) and elements (atomic number and mass). An ``Attribute`` names a table column and the
three prompt templates the numeric-subspace experiment uses: the recall question, the probe mentions and
the Yes/No comparison.

Example:
    >>> names, years = load_entities("birth_year", max_entities=3)
    >>> names[0], int(years[0])
    ('Albert Einstein', 1879)
    >>> get_attribute("birth_year").compare.format(a="Marie Curie", b="Alan Turing")
    'Was Marie Curie born before Alan Turing? Answer Yes or No.'
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import InterpError

DATA = Path(__file__).resolve().parents[2] / "data" / "entities"


@dataclass(frozen=True)
class Attribute:
    """One numeric attribute of one entity table and the prompts that ask about it.

    ``compare`` has ``{a}`` and ``{b}``; its true answer is Yes when
    value(a) < value(b) (``yes_if="less"``) or > (``"greater"``).
    ``log10``: the target is log10 of the column (populations, areas).
    ``tolerance`` is in target units.
    """

    name: str
    table: str
    column: str
    question: str
    compare: str
    yes_if: str
    tolerance: float
    log10: bool = False
    max_new_tokens: int = 6


ATTRIBUTES: dict[str, Attribute] = {a.name: a for a in (
    Attribute("birth_year", "people", "birth_year", "In what year was {e} born? Answer with the year only.",
              "Was {a} born before {b}? Answer Yes or No.", "less", 10.0),
    Attribute("death_year", "people", "death_year", "In what year did {e} die? Answer with the year only.",
              "Did {a} die before {b}? Answer Yes or No.", "less", 10.0),
    Attribute("latitude", "cities", "latitude", "What is the latitude of {e} in degrees? Answer with the number only.",
              "Is {a} farther north than {b}? Answer Yes or No.", "greater", 5.0, max_new_tokens=8),
    Attribute("longitude", "cities", "longitude",
              "What is the longitude of {e} in degrees? Answer with the number only.",
              "Is {a} farther east than {b}? Answer Yes or No.", "greater", 10.0, max_new_tokens=8),
    Attribute("population", "cities", "population", "What is the population of {e}? Answer with the number only.",
              "Does {a} have more inhabitants than {b}? Answer Yes or No.", "greater", 0.5, log10=True,
              max_new_tokens=10),
    Attribute("country_population", "countries", "population",
              "What is the population of {e}? Answer with the number only.",
              "Does {a} have more inhabitants than {b}? Answer Yes or No.", "greater", 0.5, log10=True,
              max_new_tokens=10),
    Attribute("country_area", "countries", "area_km2",
              "What is the area of {e} in square kilometers? Answer with the number only.",
              "Is {a} larger in area than {b}? Answer Yes or No.", "greater", 0.5, log10=True, max_new_tokens=10),
    Attribute("atomic_number", "elements", "atomic_number",
              "What is the atomic number of {e}? Answer with the number only.",
              "Does {a} have a higher atomic number than {b}? Answer Yes or No.", "greater", 2.0, max_new_tokens=10),
    Attribute("atomic_mass", "elements", "atomic_mass", "What is the atomic mass of {e}? Answer with the number only.",
              "Is an atom of {a} heavier than an atom of {b}? Answer Yes or No.", "greater", 5.0, max_new_tokens=8),
)}


def get_attribute(name: str) -> Attribute:
    """The attribute called ``name``; an unknown name is an error that lists the valid ones."""
    if name not in ATTRIBUTES:
        raise InterpError(f"unknown attribute {name!r}; valid: {', '.join(ATTRIBUTES)}")
    return ATTRIBUTES[name]


def load_entities(attribute: str | Attribute, max_entities: int | None = None,
                  data_dir: str | Path | None = None) -> tuple[list[str], np.ndarray]:
    """Entity names and target values (log10 where the attribute says so), in table order."""
    att = get_attribute(attribute) if isinstance(attribute, str) else attribute
    path = Path(data_dir or DATA) / f"{att.table}.csv"
    if not path.exists():
        raise InterpError(f"entity table {path} is missing; run scripts/build_entity_tables.py")
    names, values = [], []
    with path.open(encoding="utf-8") as f:
        for row in csv.DictReader(f):
            raw = row.get(att.column, "")
            try:
                v = float(raw)
            except ValueError:
                continue  # entities without a value are left out
            if att.log10:
                if v <= 0:
                    continue
                v = math.log10(v)
            names.append(row["name"])
            values.append(v)
    if max_entities:
        names, values = names[:max_entities], values[:max_entities]
    return names, np.asarray(values, dtype=np.float64)


# --------------------------------------------------------------- prompts
def probe_prompts(att: Attribute, names: Sequence[str], seed: int = 0) -> tuple[list[str], list[str]]:
    """Two mentions per entity: the recall question, and the comparison prompt with it as the second entity."""
    rng = np.random.default_rng(seed)
    prompts, ents = [], []
    for i, n in enumerate(names):
        partner = names[(i + 1 + int(rng.integers(len(names) - 1))) % len(names)] if len(names) > 1 else n
        prompts += [att.question.format(e=n), att.compare.format(a=partner, b=n)]
        ents += [n, n]
    return prompts, ents


def comparison_pairs(att: Attribute, names: Sequence[str], values: np.ndarray, n_pairs: int,
                     seed: int = 0) -> list[tuple[str, str, bool]]:
    """Balanced (a, b, true answer is Yes) prompts from distinct pairs with distinct values; half Yes, half No.

    As the paper's code: all unordered pairs, shuffled, each oriented so Yes and No alternate. When
    there are fewer pairs than ``n_pairs``, each pair is used once more in the other order (so a pair
    appears at most twice, once per answer); the result may then be shorter than ``n_pairs``.

    Example:
        >>> att = get_attribute("birth_year")
        >>> comparison_pairs(att, ["A", "B", "C"], np.array([1900.0, 1800.0, 1850.0]), 2, seed=0)[0][2]
        True
    """
    if len(names) < 2:
        raise InterpError("the flip test needs at least 2 entities")
    rng = np.random.default_rng(seed)
    combos = [(i, j) for i in range(len(names)) for j in range(i + 1, len(names)) if values[i] != values[j]]
    if not combos:
        raise InterpError("could not form comparison pairs: the entities' values are all equal")
    order = rng.permutation(len(combos))
    pairs = []
    for flipped in (False, True):
        for k, c in enumerate(order):
            if len(pairs) >= n_pairs:
                return pairs
            i, j = combos[c]
            lo, hi = (i, j) if values[i] < values[j] else (j, i)
            want_yes = (k % 2 == 0) != flipped
            # yes_if=less: "a before b" is Yes when a has the smaller value
            a, b = (lo, hi) if want_yes == (att.yes_if == "less") else (hi, lo)
            pairs.append((names[a], names[b], want_yes))
    return pairs
