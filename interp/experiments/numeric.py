"""Numeric attributes live in linear subspaces (El-Shangiti et al., arXiv 2410.13194) as one experiment.

§3 of ``shared/methods.md`` on interp's one path:

1. data: an entity table and its attribute (``interp.data.entities``); with
   ``filter_known`` the model is asked each entity's value (greedy, a few
   tokens) and only the entities it recalls within a tolerance are kept;
2. capture: the residual stream (``resid_post``) at the last token of two
   mentions of each entity (the recall question, and a comparison prompt with
   the entity second), every probed layer;
3. fit: ``NumericSubspace`` (StandardScaler + PLS) per layer, scored with
   entity-held-out folds beside ridge, PCA + linear and shuffled targets;
   then, at each flip layer, the PLS direction on all kept entities;
4. intervene: comparison prompts ("Was X born before Y? Answer Yes or No."):
   ``Add`` ±α·n·u at Y's last token (n the layer's mean residual norm) —
   pushed the way that should flip the model's own answer — for the PLS
   direction and random unit directions;
5. evaluate: the Yes/No answer is the sign of the logit difference
   (``interp.evaluation.logit_diff``); a flip is a sign change;
6. report: a ``Result`` with the R² per layer, the flip rates, the entities
   in the PLS plane and the headlines (``write_report`` writes it with ``out``).

Example:
    from interp.experiments import numeric
    result = numeric.run(model, numeric.Config(attribute="birth_year", max_entities=100), out="runs/birth")
    result["best_layer"], result["best_r2"], result["flip_rate_pls"]
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..analyzers.numeric import NumericSubspace, cross_validate_layers
from ..capture import recording
from ..data.entities import (ATTRIBUTES, Attribute, comparison_pairs, get_attribute, load_entities,
                             probe_prompts)
from ..errors import InterpError
from ..evaluation import logit_diff
from ..interventions import Add, Intervention
from ..report import Headline, Result, Stopwatch, write_report

__all__ = ["Config", "run", "check_config", "recall_filter", "Recall", "parse_number", "entity_positions",
           "capture_entities", "flip_test", "push", "best_flip", "answer_tokens", "default_flip_layers",
           "ATTRIBUTES", "PAPER", "TARGETS"]

#: What the paper reports (``shared/methods.md`` §3; 7B models).
PAPER = {"r2": "> 0.8", "flips": "PLS flips far more than random"}
#: This project's targets: best-layer R² and how many times more often PLS flips answers than random.
TARGETS = {"r2": 0.6, "flip_ratio": 3.0}


@dataclass
class Config:
    """Settings of the numeric-subspace experiment; defaults are those of ``interp numeric``."""

    attribute: str = "birth_year"  #: attribute name (``interp.data.entities.ATTRIBUTES``)
    max_entities: int | None = 300  #: entities read from the table, in table order; None reads all
    tolerance: float | None = None  #: recall tolerance in target units; None: the attribute's own
    filter_known: bool = True  #: keep only entities whose value the model recalls (the paper's filter)
    layers: Sequence[int] | None = None  #: layers probed; None probes every layer
    flip_layers: Sequence[int] | None = None  #: layers of the flip test; None: 5 from depth/8 to 3/4 depth
    alphas: Sequence[float] = (0.25, 0.5, 1.0, 2.0)  #: push sizes in units of the layer's mean residual norm
    n_pairs: int = 64  #: comparison prompts, half with true answer Yes
    n_random: int = 3  #: random control directions
    n_components: int = 5  #: PLS components (the paper uses 5; its code defaults to 50)
    n_splits: int = 5  #: entity-held-out folds
    batch_size: int = 16  #: prompts per forward pass
    seed: int = 0  #: seed of folds, probe-prompt partners, comparison pairs and random directions
    data_dir: str | None = None  #: folder with the entity tables; None: the repo's data/entities
    progress: bool = True  #: show progress bars


def _layer_list(values, what: str, top: int | None) -> list[int]:
    values = list(values)
    if not values:
        raise InterpError(f"no {what} given; pass layer indices")
    if any(isinstance(x, bool) or not float(x).is_integer() for x in values):
        raise InterpError(f"{what} must be whole numbers, got {values}")
    values = [int(x) for x in values]
    if any(x < 0 or (top is not None and x > top) for x in values):
        raise InterpError(f"{what} must be in 0..{top if top is not None else 'n_layers − 1'}, got {values}")
    return values


def check_config(config: Config, n_layers: int | None = None) -> Config:
    """Validate attribute, layers, flip layers and α (before any model is loaded); return the config.

    With ``n_layers`` known, layers are checked against it; flip layers must leave a block above them
    (at most ``n_layers − 2``) and be among the probed layers.

    Example:
        >>> check_config(Config(flip_layers=[4, 10], alphas=[1, 4]), n_layers=30).alphas
        [1.0, 4.0]
    """
    get_attribute(config.attribute)
    layers = None if config.layers is None else _layer_list(config.layers, "layers",
                                                              None if n_layers is None else n_layers - 1)
    flip = None
    if config.flip_layers is not None:
        flip = _layer_list(config.flip_layers, "flip layers (the edit feeds the next block)",
                           None if n_layers is None else n_layers - 2)
        missing = [x for x in flip if layers is not None and x not in layers]
        if missing:
            raise InterpError(f"flip layers {missing} were not probed; include them in layers")
    try:
        alphas = [float(a) for a in config.alphas]
    except (TypeError, ValueError):
        raise InterpError(f"alphas must be numbers, got {config.alphas!r}") from None
    if not alphas or not all(math.isfinite(a) for a in alphas):
        raise InterpError(f"alphas must be finite numbers, got {config.alphas!r}")
    if config.max_entities is not None and config.max_entities < 1:
        raise InterpError(f"max_entities must be >= 1 (or None for the whole table), got {config.max_entities}")
    for name in ("n_components", "batch_size"):
        if getattr(config, name) < 1:
            raise InterpError(f"{name} must be >= 1, got {getattr(config, name)}")
    if config.n_pairs < 2:
        raise InterpError(f"n_pairs must be >= 2 (half Yes, half No), got {config.n_pairs}")
    if config.n_random < 0:
        raise InterpError(f"n_random must be >= 0, got {config.n_random}")
    if config.n_splits < 2:
        raise InterpError(f"n_splits must be at least 2, got {config.n_splits}")
    if config.tolerance is not None and config.tolerance < 0:
        raise InterpError(f"tolerance must be >= 0, got {config.tolerance}")
    return replace(config, layers=layers, flip_layers=flip, alphas=alphas)


def run(model, config: Config | None = None, out=None) -> Result:
    """Recall filter, per-layer probing and the flip test; with ``out``, write the report there.

    With ``out`` a report of the probing stage is written before the flip test starts (so the R² per
    layer survives an interrupted flip test), then replaced by the full one.
    """
    config = check_config(config or Config(), model.n_layers)
    att = get_attribute(config.attribute)
    layers = list(range(model.n_layers)) if config.layers is None else config.layers
    flip_layers = default_flip_layers(model.n_layers) if config.flip_layers is None else config.flip_layers
    if any(x not in layers for x in flip_layers):
        raise InterpError(f"flip layers {[x for x in flip_layers if x not in layers]} were not probed; "
                          f"include them in layers")
    sw = Stopwatch()
    report: dict = {"model": model.describe(), "attribute": att.name, "table": att.table, "column": att.column,
                    "target": f"log10({att.column})" if att.log10 else att.column,
                    "n_components": config.n_components, "n_splits": config.n_splits, "seed": config.seed,
                    "filter_known": config.filter_known}

    # data: the entity table, filtered to what the model recalls
    with sw("data"):
        names, values = load_entities(att, config.max_entities, config.data_dir)
        if config.filter_known:
            rec = recall_filter(model, att, names, values, config.tolerance, config.batch_size, config.progress)
            report["recall"] = rec.summary()
            report["recall"]["examples"] = [{"entity": n, "value": float(v), "answer": a}
                                            for n, v, a in list(zip(names, values, rec.answers))[:20]]
            names = [n for n, k in zip(names, rec.known) if k]
            values = values[rec.known]
    report["n_entities"] = len(names)
    if len(names) < config.n_splits:
        raise InterpError(f"only {len(names)} entities survive the recall filter for {att.name}, fewer than "
                          f"{config.n_splits} folds; loosen --tolerance or pass --no-filter")

    # capture: resid_post at each mention's last entity token, every probed layer
    with sw("capture"):
        X, ents = capture_entities(model, att, names, layers, config.batch_size, config.progress, config.seed)
    y = np.repeat(values, 2)

    # fit: entity-held-out R² per layer, then the PLS direction at each flip layer
    with sw("fit"):
        cv = cross_validate_layers(X, y, ents, config.n_components, config.n_splits, seed=config.seed,
                                   progress=config.progress)
        report["layers"] = layers
        report["pls_r2"] = cv.pop("pls")
        report["baselines"] = cv
        best = int(np.nanargmax(report["pls_r2"]))
        report["best_layer"] = layers[best]
        report["best_r2"] = report["pls_r2"][best]
        directions, norms = {}, {}
        for layer in flip_layers:
            Xl = X[layers.index(layer)]
            directions[layer] = NumericSubspace(config.n_components).fit(Xl, y).direction_
            norms[layer] = float(np.linalg.norm(Xl, axis=1).mean())
    if out is not None:  # the probing results survive an interrupted flip test
        probe = dict(report)
        write_report(Result("numeric", probe, figures={"r2_per_layer": _plots().numeric_r2(probe)},
                            config=config, timing=dict(sw.seconds), title=f"Numeric subspace: {att.name} (probing)",
                            artifacts={"probe.json": lambda p: p.write_text(json.dumps(probe, indent=1))}),
                     out, model=model)

    # intervene + evaluate: push along the direction at Y's last token, count Yes/No flips
    with sw("flip test"):
        pairs = comparison_pairs(att, names, values, config.n_pairs, config.seed)
        flip = flip_test(model, att, pairs, directions, config.alphas, norms, config.n_random, config.batch_size,
                         config.seed, config.progress)
    flip["residual_norms"] = {str(k): v for k, v in norms.items()}
    report["flip"] = flip
    report.update({f"best_flip_{k}": v for k, v in best_flip(flip).items()})
    report["flip_rate_pls"] = report["best_flip_flip_rate_pls"]
    report["flip_rate_random"] = report["best_flip_flip_rate_random"]

    # report: the entities in the PLS plane at the best layer, headlines, figures
    bl = layers.index(report["best_layer"])
    est = NumericSubspace(min(config.n_components, 2) if config.n_components >= 2 else 1).fit(X[bl], y)
    report["projection"] = {"entities": ents[::2], "values": values.tolist(),
                            "xy": est.transform(X[bl][::2])[:, :2].tolist()}
    report["seconds"] = round(sw.total, 1)
    return _result(model, config, out, report, sw)


def _plots():
    from .. import plots

    return plots


def _result(model, config: Config, out, report: dict, sw: Stopwatch) -> Result:
    plots = _plots()
    flip = report["flip"]
    n = report["n_entities"]
    split_cv = f"entity-held-out {report['n_splits']}-fold CV ({n} entities, {2 * n} mentions)"
    split_flip = (f"{flip['n_pairs']} comparison prompts (layer and α chosen on the same prompts), "
                  f"{flip['n_random']} random directions")
    i = report["layers"].index(report["best_layer"])
    ratio = report["best_flip_ratio"]
    r2_met = report["best_r2"] >= TARGETS["r2"]
    flip_met = (ratio is not None and ratio >= TARGETS["flip_ratio"]) or (
        ratio is None and report["flip_rate_pls"] > 0)
    base = ", ".join(f"{k} {v[i]:.3f}" for k, v in report["baselines"].items())
    headlines = [
        Headline(f"PLS R² of {report['target']}, best layer ({report['best_layer']})", report["best_r2"], split_cv,
                 target=f"≥ {TARGETS['r2']}", paper=PAPER["r2"], met=r2_met, note=f"same layer: {base}"),
        Headline(f"flip rate, PLS direction (layer {report['best_flip_layer']}, α {report['best_flip_alpha']})",
                 report["flip_rate_pls"], split_flip, target=f"≥ {TARGETS['flip_ratio']}× random",
                 paper=PAPER["flips"], met=flip_met),
        Headline("flip rate, random directions (same layer and α)", report["flip_rate_random"], split_flip),
        Headline("baseline accuracy on the comparison prompts", flip["baseline_accuracy"], split_flip,
                 note=f"Yes rate {flip['baseline_yes_rate']:.2f}"),
    ]
    conclusion = (f"{model.name}, attribute {report['attribute']}: the residual stream at the entity's last token "
                  f"predicts {report['target']} of held-out entities with R² {report['best_r2']:.3f} at layer "
                  f"{report['best_layer']} ({'meets' if r2_met else 'misses'} the target of {TARGETS['r2']}); "
                  f"moving along the PLS direction at layer {report['best_flip_layer']} with α "
                  f"{report['best_flip_alpha']} flips {report['flip_rate_pls']:.3f} of the answers against "
                  f"{report['flip_rate_random']:.3f} for random directions.")
    rows = [{"layer": layer, "PLS R²": report["pls_r2"][j], **{k: v[j] for k, v in report["baselines"].items()}}
            for j, layer in enumerate(report["layers"])]
    flips = [{"layer": layer, "α": a, "PLS": flip["flip_rate_pls"][li][ai], "random": flip["flip_rate_random"][li][ai]}
             for li, layer in enumerate(flip["layers"]) for ai, a in enumerate(flip["alphas"])]
    figures = {"r2_per_layer": plots.numeric_r2(report), "flips": plots.numeric_flips(flip),
               "pls_plane": plots.numeric_plane(report["projection"], report["target"], report["best_layer"])}
    result = Result("numeric", report, figures=figures, headlines=headlines, conclusion=conclusion, config=config,
                    timing=dict(sw.seconds, total_s=sw.total), tables={"R² per layer": rows, "flip rates": flips},
                    title=f"Numeric subspace: {report['attribute']}")
    if out is not None:
        write_report(result, out, model=model)
    return result


# --------------------------------------------------------------- recall filter
_NUM = re.compile(r"(-?\d[\d,]*(?:\.\d+)?)\s*(million|billion|thousand)?\s*°?\s*([NSEW](?![a-z]))?", re.I)
_MULT = {"thousand": 1e3, "million": 1e6, "billion": 1e9}


def parse_number(text: str) -> float | None:
    """The first number in a reply: commas dropped, 'million'/'billion' applied, S/W made negative.

    Example:
        >>> parse_number("About 2.5 million people"), parse_number("33.9° S"), parse_number("no idea")
        (2500000.0, -33.9, None)
    """
    m = _NUM.search(text)
    if not m:
        return None
    num, mult, hemi = m.groups()
    try:
        v = float(num.replace(",", ""))
    except ValueError:
        return None
    if mult:
        v *= _MULT[mult.lower()]
    if hemi and hemi.upper() in "SW":
        v = -abs(v)
    return v


@dataclass
class Recall:
    """What the model answered for each entity and which ones it knows."""

    names: list[str]
    values: np.ndarray
    answers: list[str]
    parsed: list[float | None]
    known: np.ndarray  # bool per entity
    tolerance: float

    def summary(self) -> dict:
        return {"n_entities": len(self.names), "n_known": int(self.known.sum()),
                "n_unparsed": sum(p is None for p in self.parsed), "tolerance": self.tolerance}


def recall_filter(model, attribute: str | Attribute, names: Sequence[str], values: np.ndarray,
                  tolerance: float | None = None, batch_size: int = 16, progress: bool = True) -> Recall:
    """Greedy-decode the attribute's question for each entity and keep those answered within ``tolerance``."""
    from .. import generation

    att = get_attribute(attribute) if isinstance(attribute, str) else attribute
    tol = att.tolerance if tolerance is None else float(tolerance)
    if tol < 0:
        raise InterpError(f"tolerance must be >= 0, got {tol}")
    answers = generation.generate(model, [att.question.format(e=n) for n in names], max_new_tokens=att.max_new_tokens,
                                  batch_size=batch_size, progress=progress)
    parsed = [parse_number(a) for a in answers]
    known = np.zeros(len(names), dtype=bool)
    for i, p in enumerate(parsed):
        if p is None or (att.log10 and p <= 0):
            continue
        guess = math.log10(p) if att.log10 else p
        known[i] = abs(guess - values[i]) <= tol
    return Recall(list(names), np.asarray(values), answers, parsed, known, tol)


# --------------------------------------------------------------- capture
def entity_positions(model, prompts: Sequence[str], entities: Sequence[str], chat: bool = True) -> list[list[int]]:
    """Per prompt, ``[index]`` of the last token of the last mention of its entity (token offsets)."""
    if len(prompts) != len(entities):
        raise InterpError(f"got {len(prompts)} prompts but {len(entities)} entities")
    enc = model.encode(list(prompts), chat=chat)
    out = []
    for i, (text, ent) in enumerate(zip(enc.texts, entities)):
        if not ent or not ent.strip():
            raise InterpError(f"entity {i} is empty ({ent!r}): it tokenizes to nothing; drop it from the table")
        end = text.rfind(ent)
        if end < 0:
            raise InterpError(f"entity {ent!r} does not occur in prompt {i}; the chat template may have changed it")
        lo, hi = end, end + len(ent)
        offsets = model.tokenizer(text, add_special_tokens=not chat, return_offsets_mapping=True)["offset_mapping"]
        inside = [t for t, (a, b) in enumerate(offsets) if b > a and a < hi and b > lo]
        if not inside:
            raise InterpError(f"entity {ent!r} in prompt {i} covers no tokens; check the tokenizer")
        if len(offsets) != len(enc.ids[i]):
            raise InterpError(f"prompt {i}: offsets and token ids disagree in length; use chat=True")
        out.append([inside[-1]])
    return out


def capture_entities(model, att: Attribute, names: Sequence[str], layers: Sequence[int], batch_size: int = 16,
                     progress: bool = True, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Residual stream (resid_post) at each mention's last entity token: ([layers, rows, d], entity of each row)."""
    prompts, ents = probe_prompts(att, names, seed)
    pos = entity_positions(model, prompts, ents)
    acts = model.capture(prompts, [f"resid_post.{layer}" for layer in layers], pos, batch_size=batch_size,
                         progress=progress)
    X = np.stack([acts[f"resid_post.{layer}"][:, 0].numpy() for layer in layers])
    return X, ents


# --------------------------------------------------------------- flip test
def answer_tokens(model, batch) -> tuple[int, int, str]:
    """Token ids of Yes/No as the model starts its reply: ``"Yes"``/``"No"`` or ``" Yes"``/``" No"``."""
    tok = model.tokenizer
    options = []
    for yes, no in (("Yes", "No"), (" Yes", " No")):
        y, n = tok.encode(yes, add_special_tokens=False), tok.encode(no, add_special_tokens=False)
        # multi-token words (tiny test vocabularies) are read by their first token when those differ
        if y and n and y[0] != n[0]:
            options.append((y[0], n[0], repr(yes)))
    if not options:
        raise InterpError(f"{model.name}: the tokenizer cannot tell 'Yes' from 'No' by their first token")
    if len(options) == 1:
        return options[0]
    probs = torch.softmax(model.last_logits(batch).float(), -1)
    mass = [float(probs[:, [y, n]].sum()) for y, n, _ in options]
    return options[int(np.argmax(mass))]


def _random_units(d: int, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(n, d, generator=g)
    return r / r.norm(dim=1, keepdim=True)


def push(direction: torch.Tensor, size: float, positions: Sequence[Sequence[int]],
         up: Sequence[bool]) -> Intervention:
    """``Add`` ±size·direction at each prompt's ``positions``: + where ``up[i]``, − elsewhere.

    Example:
        >>> iv = push(torch.tensor([1.0, 0.0]), 2.0, [[0], [1]], [True, False])
        >>> from interp.interventions import Context
        >>> iv.apply(torch.zeros(2, 2, 2), Context.whole(torch.zeros(2, 2, 2)))[:, :, 0].tolist()
        [[2.0, 0.0], [0.0, -2.0]]
    """
    parts = []
    for sign, keep in ((1.0, True), (-1.0, False)):
        rows = [list(p) if bool(u) == keep else [] for p, u in zip(positions, up)]
        if any(rows):  # an all-empty list would read as an empty mask
            parts.append(Add(direction, scale=sign * size, positions=rows))
    return parts[0] if len(parts) == 1 else parts[0] + parts[1]


def flip_test(model, att: Attribute, pairs: Sequence[tuple[str, str, bool]], directions: dict[int, np.ndarray],
              alphas: Sequence[float], norms: dict[int, float], n_random: int = 3, batch_size: int = 16,
              seed: int = 0, progress: bool = True) -> dict:
    """Add ±α·norm·u at resid_post.L at b's last token; count Yes/No answer flips.

    ``directions[L]`` is the unit direction along which the value grows at
    layer L; ``norms[L]`` the mean residual norm there. Each prompt is pushed
    the way that should flip its baseline answer (toward No if it said Yes).
    Random controls: ``n_random`` unit directions with the same push.
    One forward per batch records every flip layer's residual and the
    baseline answer; each edit then re-runs only the blocks above L
    (``model.last_logits(start_layer=L + 1, resid=...)``) with the ``Add``
    attached at ``resid_pre.{L+1}`` (the same tensor as ``resid_post.L``).
    Returns baseline accuracy and flip rates [layer][alpha] for "pls" and
    "random" (mean over seeds).
    """
    layers = sorted(directions)
    if any(not 0 <= layer < model.n_layers - 1 for layer in layers):
        raise InterpError(f"flip layers must be in 0..{model.n_layers - 2} (the edit feeds the next block)")
    prompts = [att.compare.format(a=a, b=b) for a, b, _ in pairs]
    truth = np.array([t for _, _, t in pairs])
    pos_b = [p[0] for p in entity_positions(model, prompts, [b for _, b, _ in pairs])]
    enc = model.encode(prompts)
    rand = _random_units(model.d_model, n_random, seed + 1)
    dirs = {layer: torch.as_tensor(directions[layer], dtype=torch.float32) for layer in layers}
    n_al = len(alphas)
    flips = {"pls": np.zeros((len(layers), n_al)), "random": np.zeros((len(layers), n_al, n_random))}
    base_yes = np.zeros(len(pairs), dtype=bool)
    answers = None
    label = ""
    steps = range(0, len(prompts), batch_size)
    bar = tqdm(total=len(steps) * len(layers), desc="flip test", unit="layer-batch", disable=not progress)
    for s in steps:
        rows = list(range(s, min(s + batch_size, len(prompts))))
        batch = model.pad([enc.ids[i] for i in rows])
        if answers is None:
            yes_id, no_id, label = answer_tokens(model, batch)
            answers = torch.tensor([[yes_id, no_id]])
        ans = answers.expand(len(rows), 2)
        # one forward gives the baseline answer and every flip layer's residual, reused below
        with recording(model, [f"resid_post.{layer}" for layer in layers]) as cache:
            said_yes = (logit_diff(model.last_logits(batch).float(), ans) > 0).cpu().numpy()
        base_yes[rows] = said_yes
        # push b's value up when that should turn the answer to Yes (yes_if=less) / to No (greater)
        up = [(not y) == (att.yes_if == "less") for y in said_yes]
        at = [[pos_b[i]] for i in rows]
        for li, layer in enumerate(layers):
            h = cache[f"resid_post.{layer}"]
            vecs = [dirs[layer]] + [rand[k] for k in range(n_random)]
            for ai, alpha in enumerate(alphas):
                for vi, v in enumerate(vecs):
                    with model.intervene({f"resid_pre.{layer + 1}": push(v, alpha * norms[layer], at, up)}):
                        logits = model.last_logits(batch, start_layer=layer + 1, resid=h).float()
                    now_yes = (logit_diff(logits, ans) > 0).cpu().numpy()
                    n_flip = float((now_yes != said_yes).sum())
                    if vi == 0:
                        flips["pls"][li, ai] += n_flip
                    else:
                        flips["random"][li, ai, vi - 1] += n_flip
            bar.update(1)
    bar.close()
    n = len(pairs)
    return {"layers": layers, "alphas": list(alphas), "answer_tokens": label, "n_pairs": n,
            "baseline_accuracy": float((base_yes == truth).mean()), "baseline_yes_rate": float(base_yes.mean()),
            "flip_rate_pls": (flips["pls"] / n).tolist(),
            "flip_rate_random": (flips["random"].mean(-1) / n).tolist(),
            "flip_rate_random_per_seed": (flips["random"] / n).tolist(),
            "n_random": n_random}


def best_flip(flip: dict) -> dict:
    """The (layer, α) where PLS flips most beyond random (ties: the smaller α)."""
    pls, rnd = np.asarray(flip["flip_rate_pls"]), np.asarray(flip["flip_rate_random"])
    gap = pls - rnd
    li, ai = np.unravel_index(int(np.argmax(gap)), gap.shape)
    return {"layer": flip["layers"][li], "alpha": flip["alphas"][ai], "flip_rate_pls": float(pls[li, ai]),
            "flip_rate_random": float(rnd[li, ai]),
            "ratio": float(pls[li, ai] / rnd[li, ai]) if rnd[li, ai] > 0 else None}


def default_flip_layers(n_layers: int, k: int = 5) -> list[int]:
    """k layers spread over the early-to-late middle (the paper finds flips early to middle).

    Example:
        >>> default_flip_layers(24)
        [3, 7, 10, 14, 18]
    """
    hi = max(0, min((3 * n_layers) // 4, n_layers - 2))
    lo = min(n_layers // 8, hi)
    return sorted({int(round(x)) for x in np.linspace(lo, hi, k)})

