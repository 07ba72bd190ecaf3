"""``interp bench refusal``: wall time of the refusal-direction search, pruned vs exhaustive.

One process, one split: the baseline filter, candidate capture and scorer
set-up are shared; then the pruned search and the exhaustive search each run
on the same candidates, and the script reports each stage's time and share
and whether both pick the same candidate. The stages are the refusal
experiment's own (``interp.experiments.refusal``), called one by one.
"""
from __future__ import annotations

import math
import time


def bench_refusal(model_name: str, n_train: int = 64, n_val: int = 28, kl_max: float = 0.1, top_k: int = 8,
                  seed: int = 0, induce_min: float = 0.0, progress: bool = True) -> dict:
    from ..analyzers.refusal import candidate_directions
    from ..data import prompts as datasets
    from ..experiments.refusal import CandidateScorer, Config, refusal_token_ids, select_direction, split_prompts
    from ..loading import load_model

    model = load_model(model_name, progress=progress)
    cfg = Config(n_train=n_train, n_val=n_val, kl_max=kl_max, induce_min=induce_min, top_k=top_k, seed=seed)
    ids = refusal_token_ids(model.tokenizer, cfg.refusal_tokens)
    t = {"start": time.time()}
    splits, counts = split_prompts(model, datasets.harmful_instructions(), datasets.harmless_instructions(), cfg,
                                   ids, progress=False)
    t["filter"] = time.time()
    acts_h = model.capture(splits["harmful_train"], "resid_pre", "post_instruction", progress=False)
    acts_l = model.capture(splits["harmless_train"], "resid_pre", "post_instruction", progress=False)
    cands = candidate_directions(acts_h, acts_l).float()
    t["candidates"] = time.time()
    scorer = CandidateScorer(model, splits["harmful_val"], splits["harmless_val"], ids, batch_size=cfg.batch_size,
                             proxy_prompts=cfg.proxy_prompts, progress=progress)
    t["scorer_setup"] = time.time()
    common = dict(kl_max=cfg.kl_max, induce_min=cfg.induce_min, max_layer_frac=cfg.max_layer_frac)
    pruned = select_direction(scorer, cands, mode="pruned", top_k=top_k, **common)
    t["pruned"] = time.time()
    exhaustive = select_direction(scorer, cands, mode="exhaustive", **common)
    t["exhaustive"] = time.time()
    shared = t["scorer_setup"] - t["start"]
    pruned_s, exhaustive_s = t["pruned"] - t["scorer_setup"], t["exhaustive"] - t["pruned"]
    stages = {"filter_s": t["filter"] - t["start"], "candidates_s": t["candidates"] - t["filter"],
              "scorer_setup_s": t["scorer_setup"] - t["candidates"]}
    return {
        "model": model_name, "n_train": n_train, "n_val": n_val, "filter_counts": counts, "kl_max": kl_max,
        "induce_min": induce_min,
        "n_candidates": int(cands.shape[0] * cands.shape[1]),
        "pruned": {"wall_s": round(shared + pruned_s, 1), "search_s": round(pruned_s, 1),
                   "fully_scored": pruned.n_scored, "choice": [pruned.layer, pruned.position],
                   "stage_share": {k: round(v / (shared + pruned_s), 3) for k, v in
                                   {**stages, "search_s": pruned_s}.items()}},
        "exhaustive": {"wall_s": round(shared + exhaustive_s, 1), "search_s": round(exhaustive_s, 1),
                       "fully_scored": exhaustive.n_scored, "choice": [exhaustive.layer, exhaustive.position],
                       "stage_share": {k: round(v / (shared + exhaustive_s), 3) for k, v in
                                       {**stages, "search_s": exhaustive_s}.items()}},
        "same_choice": (pruned.layer, pruned.position) == (exhaustive.layer, exhaustive.position),
        "stages_s": {k: round(v, 1) for k, v in stages.items()},
        "proxy_scores": {f"{k[0]},{k[1] - cands.shape[1]}": [_num(s.proxy_induce), _num(s.proxy_bypass),
                                                              _num(s.proxy_kl, 4)]
                         for k, s in pruned.scores.items()},
        "exhaustive_scores": {f"{k[0]},{k[1] - cands.shape[1]}": [round(s.bypass, 3), round(s.induce, 3),
                                                                  round(s.kl, 4)]
                              for k, s in exhaustive.scores.items()},
    }


def _num(v: float, digits: int = 3):
    return None if math.isnan(v) else round(v, digits)
