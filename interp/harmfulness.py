"""Deprecated location of the harmfulness-vs-refusal experiment: use ``interp.experiments.harmfulness``.

Kept so that code written against ``interp.harmfulness`` keeps working; it only forwards.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .analyzers.harmfulness import LatentGuard  # noqa: F401
from .evaluation import auroc  # noqa: F401
from .experiments.harmfulness import (HARM_KEYWORDS, INVERSION_TEMPLATE, Config, answer_kind,  # noqa: F401
                                      directions_from, evaluate_guard, guard_features, inner_prompt_mask,
                                      keyword_scores, reply_inversion, run, two_directions)


def wrap_in_jailbreaks(model, prompts: Sequence[str], templates: Sequence[str], seed: int = 0,
                       max_tokens: int | None = None) -> list[str]:
    """``interp.data.prompts.wrap_in_jailbreaks`` with the model's tokenizer and context as the limit."""
    from .data.prompts import wrap_in_jailbreaks as wrap

    return wrap(list(prompts), list(templates), model.tokenizer, max_tokens or (model.max_context or 4096), seed)


def run_harmfulness(model, out_dir: str | Path | None = None, n_fit: int = 100, n_test: int = 60,
                    n_jailbreak: int = 40, n_inversion: int = 24, n_dangerous: int | None = None,
                    layers_for_inversion: Sequence[int] | None = None, alphas: Sequence[float] = (0.0, 0.5, 1.0, 2.0),
                    seed: int = 0, max_new_tokens: int = 32, max_jailbreak_tokens: int = 700,
                    progress: bool = True) -> dict:
    """``interp.experiments.harmfulness.run`` with the older argument names; returns the report dict."""
    cfg = Config(n_fit=n_fit, n_test=n_test, n_jailbreak=n_jailbreak, n_inversion=n_inversion, n_dangerous=n_dangerous,
                 inversion_layers=layers_for_inversion, alphas=tuple(alphas), seed=seed, max_new_tokens=max_new_tokens,
                 max_jailbreak_tokens=max_jailbreak_tokens, progress=progress)
    return run(model, cfg, out_dir).report
