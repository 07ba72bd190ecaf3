"""Deprecated location of the numeric-subspace experiment: use ``interp.experiments.numeric`` (and
``interp.data.entities`` for the entity tables and prompt templates).

Kept so that code written against ``interp.numeric_experiment`` keeps working; it only forwards.
"""
from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from .data.entities import (ATTRIBUTES, DATA, Attribute, comparison_pairs, get_attribute,  # noqa: F401
                            load_entities, probe_prompts)
from .experiments.numeric import (Config, Recall, answer_tokens, best_flip, capture_entities,  # noqa: F401
                                  default_flip_layers, entity_positions, flip_test, parse_number, recall_filter, run)


def run_numeric(model, attribute: str, out_dir: str | Path | None = None, **settings) -> dict:
    """``interp.experiments.numeric.run`` with the older signature; returns the JSON report as a dict.

    ``settings`` are ``Config`` fields (``max_entities``, ``layers``, ``alphas``, ``n_pairs``, ...).
    """
    from .errors import InterpError

    known = {f.name for f in fields(Config)}
    bad = sorted(set(settings) - known)
    if bad:
        raise InterpError(f"unknown setting(s) {bad}; valid: {', '.join(sorted(known - {'attribute'}))}")
    return run(model, Config(attribute=attribute, **settings), out_dir).report
