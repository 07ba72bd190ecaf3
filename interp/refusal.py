"""Deprecated location of the refusal-direction experiment: use ``interp.experiments.refusal``.

Kept so that code written against ``interp.refusal`` keeps working; it only forwards.
"""
from __future__ import annotations

from typing import Sequence

from .experiments.refusal import (Config, RefusalConfig, RefusalResult, addition, baseline_metric, evaluate,  # noqa: F401
                                  filter_pool, run, split_prompts)
from .generation import generate


def run_refusal(model, cfg: Config | None = None, out_dir=None, harmful=None, harmless=None, harmful_eval=None,
                harmless_eval=None, save_model: bool = False, progress: bool = True) -> RefusalResult:
    """``interp.experiments.refusal.run`` with the older argument names."""
    from dataclasses import replace

    cfg = cfg or Config()
    if save_model:
        cfg = replace(cfg, save_model=True)
    return run(model, cfg, out_dir, harmful=harmful, harmless=harmless, harmful_eval=harmful_eval,
               harmless_eval=harmless_eval, progress=progress)


def greedy(model, prompts: Sequence[str], interventions: dict | None = None, max_new_tokens: int = 48,
           batch_size: int = 16, progress: bool = True) -> list[str]:
    """Greedy chat completions under ``{site: Intervention}`` (``interp.generation.generate``)."""
    return generate(model, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress,
                    interventions=interventions)
