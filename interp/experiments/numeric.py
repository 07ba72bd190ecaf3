"""Numeric attributes live in linear subspaces (El-Shangiti et al., arXiv 2410.13194) as one experiment.

§3 of ``shared/methods.md`` on interp's one path, under the validation/test protocol
(``interp.protocol``):

1. data: an entity table and its attribute (``interp.data.entities``); the model is asked each
   entity's value (greedy, a few tokens) and only the entities it recalls within a tolerance are
   kept (the paper's filter, on for every attribute); the kept entities are split three ways by
   entity (``split_groups``, unit "entity": train / validation / test);
2. capture: the residual stream (``resid_post``) at the last token of two mentions of each entity
   (the recall question, and a comparison prompt with the entity second), every probed layer;
3. fit: ``NumericSubspace`` (StandardScaler + PLS) per layer on the train entities; the layer is
   the one with the best validation R²; test R² is read once there, beside ridge, PCA + linear and
   the same PLS on shuffled targets (all fitted on train);
4. intervene: comparison prompts ("Was X born before Y? Answer Yes or No.") among validation (then
   test) entities; ``AddPerPrompt`` adds α·u at Y's last token of ``resid_post.L`` for every α of
   the paper's sweep (−30 … 28.5 in steps of 1.5, absolute, u a unit vector), for the PLS
   direction as the paper's code maps it back (``x_weights · scale``, the *pattern*), the probe's
   read-out direction (``x_weights / scale``, the *filter*) and random unit directions;
5. evaluate: the answer is the sign of the Yes−No logit difference (``interp.evaluation.logit_diff``);
   a prompt flips when its answer changes at any α (the official code's count, which compares the
   greedy next token, is reported beside it); the flip layer and the single-α cell are chosen on
   validation prompts, then the test prompts are run once at that layer;
6. report: a ``Result`` with the ``protocol`` block, validation R² per layer, the test numbers as
   headlines (each naming its split), the flip grids and the entities in the PLS plane.
   ``Config.seeds`` repeats steps 3–5 per seed (another split, other pairs and random directions)
   and reports mean ± spread.

Example:
    from interp.experiments import numeric
    result = numeric.run(model, numeric.Config(attribute="birth_year", max_entities=100), out="runs/birth")
    result["best_layer"], result["best_r2"], result["flip_rate_pls"]   # chosen on validation, read on test
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

from ..analyzers.numeric import NumericSubspace, heldout_scores
from ..capture import recording
from ..data.entities import (ATTRIBUTES, Attribute, comparison_pairs, get_attribute, load_entities,
                             probe_prompts)
from ..errors import InterpError
from ..evaluation import logit_diff
from ..interventions import AddPerPrompt
from ..prefix import LeadingColumns
from ..protocol import protocol_block, seed_summary, split_groups
from ..report import Headline, Result, Stopwatch, write_report

__all__ = ["Config", "run", "check_config", "recall_filter", "Recall", "parse_number", "entity_positions",
           "capture_entities", "fit_probes", "flip_test", "sweep", "choose_flip", "answer_tokens",
           "default_flip_layers",
           "ATTRIBUTES", "PAPER", "PAPER_ALPHAS", "TARGETS"]

#: What the paper reports (``shared/methods.md`` §3; 7B models).
PAPER = {"r2": "> 0.8", "flips": "PLS flips far more than random"}
#: This project's targets: test R² at the chosen layer and how many times more often PLS flips answers than random.
TARGETS = {"r2": 0.6, "flip_ratio": 3.0}
#: The official code's sweep, ``torch.arange(-30, 30, 1.5)``: 40 values from −30 to 28.5 (30 itself is left out).
PAPER_ALPHAS = tuple(float(a) for a in np.arange(-30, 30, 1.5))


@dataclass
class Config:
    """Settings of the numeric-subspace experiment; defaults are those of ``interp numeric``."""

    attribute: str = "birth_year"  #: attribute name (``interp.data.entities.ATTRIBUTES``)
    max_entities: int | None = 300  #: entities read from the table, in table order; None reads all
    tolerance: float | None = None  #: recall tolerance in target units; None: the attribute's own
    filter_known: bool = True  #: keep only entities whose value the model recalls (the paper's filter)
    layers: Sequence[int] | None = None  #: layers probed; None probes every layer
    flip_layers: Sequence[int] | None = None  #: candidate flip layers (one is chosen on validation); None: 5 spread
    alphas: Sequence[float] = PAPER_ALPHAS  #: absolute sizes α of the edit α·u (u unit); a flip at any α counts
    n_pairs: int = 64  #: comparison prompts per split (validation, test), half with true answer Yes
    n_random: int = 3  #: random unit control directions
    run_flip: bool = True  #: run the flip test (False: recall filter and probing only)
    n_components: int = 5  #: PLS components (the paper uses 5; its code defaults to 50)
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)  #: train / validation / test share of the entities
    batch_size: int = 16  #: prompts per forward pass
    max_rows: int = 256  #: rows per forward in the flip sweep (prompts × (direction, α) edits stacked)
    seed: int = 0  #: seed of the entity split, probe-prompt partners, comparison pairs and random directions
    seeds: Sequence[int] | None = None  #: repeat split, fit and flip test per seed; headlines become mean ± spread
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
    """Validate attribute, layers, flip layers, α, split and seeds (before any model is loaded); return the config.

    With ``n_layers`` known, layers are checked against it; flip layers must leave a block above them
    (at most ``n_layers − 2``) and be among the probed layers.

    Example:
        >>> check_config(Config(flip_layers=[4, 10], alphas=[-3, 3]), n_layers=30).alphas
        [-3.0, 3.0]
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
    for name in ("n_components", "batch_size", "max_rows"):
        if getattr(config, name) < 1:
            raise InterpError(f"{name} must be >= 1, got {getattr(config, name)}")
    if config.n_pairs < 2:
        raise InterpError(f"n_pairs must be >= 2 (half Yes, half No), got {config.n_pairs}")
    if config.n_random < 1:
        raise InterpError(f"n_random must be >= 1 (the flip test compares against random directions), "
                          f"got {config.n_random}")
    fr = tuple(float(f) for f in config.fractions)
    if len(fr) != 3 or min(fr) <= 0 or not math.isclose(sum(fr), 1.0, abs_tol=1e-6):
        raise InterpError(f"fractions must be three positive shares (train, validation, test) summing to 1, "
                          f"got {config.fractions}")
    if config.tolerance is not None and config.tolerance < 0:
        raise InterpError(f"tolerance must be >= 0, got {config.tolerance}")
    seeds = None if config.seeds is None else [int(x) for x in config.seeds]
    if seeds is not None and (not seeds or len(set(seeds)) != len(seeds)):
        raise InterpError(f"seeds must be distinct integers, got {config.seeds}")
    return replace(config, layers=layers, flip_layers=flip, alphas=alphas, fractions=fr, seeds=seeds)


def run(model, config: Config | None = None, out=None) -> Result:
    """Recall filter, entity split, probing per layer and the flip test; with ``out``, write the report there.

    With ``out`` a report of the first seed's probing stage is written before the flip test starts
    (so the R² survives an interrupted flip test), then replaced by the full one.
    """
    config = check_config(config or Config(), model.n_layers)
    att = get_attribute(config.attribute)
    layers = list(range(model.n_layers)) if config.layers is None else config.layers
    flip_layers = default_flip_layers(model.n_layers) if config.flip_layers is None else config.flip_layers
    if not config.run_flip:
        flip_layers = []
    if any(x not in layers for x in flip_layers):
        raise InterpError(f"flip layers {[x for x in flip_layers if x not in layers]} were not probed; "
                          f"include them in layers")
    sw = Stopwatch()
    report: dict = {"model": model.describe(), "attribute": att.name, "table": att.table, "column": att.column,
                    "target": f"log10({att.column})" if att.log10 else att.column,
                    "n_components": config.n_components, "seed": config.seed, "filter_known": config.filter_known}

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
    if len(names) < 10:
        raise InterpError(f"only {len(names)} entities survive the recall filter for {att.name}; the three-way split "
                          f"needs at least 10 (2 for validation and for test): raise --max-entities or loosen "
                          f"--tolerance")

    # capture: resid_post at each mention's last entity token, every probed layer (shared by all seeds)
    with sw("capture"):
        X, ents = capture_entities(model, att, names, layers, config.batch_size, config.progress, config.seed)
    y = np.repeat(values, 2)

    # split, fit, intervene, evaluate: once per seed
    seeds = config.seeds or [config.seed]
    per_seed, rows = {}, {}
    for s in seeds:
        with sw("fit"):
            fit = fit_probes(X, y, ents, layers, flip_layers, config.n_components, config.fractions, s,
                             config.progress)
        rows[s] = fit["rows"]
        if out is not None and s == seeds[0]:  # the probing results survive an interrupted flip test
            _write_probe(model, config, out, dict(report, **fit["report"]), fit["protocol"], sw)
        flips = {}
        if config.run_flip:
            with sw("flip test"):
                flips = _flip_stage(model, att, config, names, values, fit, s)
        per_seed[s] = dict(fit["report"], **flips, protocol=fit["protocol"])

    # report: the first seed's numbers, the seed summary, headlines, figures
    first, split = per_seed[seeds[0]], rows[seeds[0]]
    report.update({k: v for k, v in first.items() if k != "protocol"})
    bl = layers.index(report["best_layer"])
    plane = NumericSubspace(min(2, config.n_components)).fit(X[bl][split["train"]], y[split["train"]])
    shown = split["test"][::2]  # one mention per test entity (an entity's two rows are adjacent)
    report["projection"] = {"entities": [ents[i] for i in shown], "values": y[shown].tolist(),
                            "xy": plane.transform(X[bl][shown])[:, :2].tolist(), "split": "test",
                            "fitted_on": "train"}
    report["seconds"] = round(sw.total, 1)
    protocol = dict(first["protocol"])
    if config.seeds:
        protocol["seeds"] = list(seeds)
    return _result(model, config, out, report, per_seed, protocol, sw)


def fit_probes(X: np.ndarray, y: np.ndarray, ents: Sequence[str], layers: Sequence[int], flip_layers: Sequence[int],
               n_components: int = 5, fractions=(0.6, 0.2, 0.2), seed: int = 0, progress: bool = True) -> dict:
    """Split the entities, fit per layer on train, choose the layer on validation, read test there once.

    Returns ``report`` (validation R² per layer for PLS and each baseline, the chosen layer and its test
    R²s), ``protocol`` (``interp.protocol.protocol_block``), the train-fitted pattern and filter
    directions at each flip layer, the entity names and the row indices of each split.

    Example:
        fit = fit_probes(X, np.repeat(values, 2), ents, layers=[0, 1], flip_layers=[0], seed=0)
        fit["report"]["best_layer"], fit["report"]["best_r2"]      # chosen on validation, read on test
    """
    splits = split_groups(ents, fractions, seed, unit="entity")
    rows = {k: getattr(splits, k) for k in ("train", "val", "test")}
    if splits.groups["val"] < 2 or splits.groups["test"] < 2:
        raise InterpError(f"{len(set(ents))} entities leave {splits.groups['val']} for validation and "
                          f"{splits.groups['test']} for test; the flip test needs 2 in each: give more entities")
    val = heldout_scores(X, y, rows["train"], rows["val"], n_components, seed=seed, progress=progress)
    best = int(np.nanargmax(val["pls"]))
    test = heldout_scores(X[best:best + 1], y, rows["train"], rows["test"], n_components, seed=seed, progress=False)
    directions = {}
    k = min(n_components, len(rows["train"]) - 1)
    for layer in flip_layers:
        est = NumericSubspace(k).fit(X[list(layers).index(layer)][rows["train"]], y[rows["train"]])
        directions[layer] = {"pattern": est.direction_, "filter": est.filter_direction_}
    report = {"layers": list(layers), "pls_r2": val["pls"], "baselines": {k: v for k, v in val.items() if k != "pls"},
              "r2_split": "validation",
              "best_layer": list(layers)[best], "best_r2_val": val["pls"][best], "best_r2": test["pls"][0],
              "test": {"layer": list(layers)[best], "pls_r2": test["pls"][0],
                       **{k: v[0] for k, v in test.items() if k != "pls"},
                       "n_entities": splits.groups["test"], "n_rows": len(rows["test"])}}
    protocol = protocol_block(splits, choices="probe layer: best validation PLS R²; flip layer: largest validation "
                                              "gap between the PLS (pattern) and random any-α flip rates; α cell: "
                                              "largest gap at that layer; test read once at those choices",
                              fitted_on="train entities")
    names = {k: sorted({ents[i] for i in r}) for k, r in rows.items()}
    return {"report": report, "protocol": protocol, "directions": directions, "names": names, "rows": rows}


def _flip_stage(model, att: Attribute, config: Config, names: Sequence[str], values: np.ndarray, fit: dict,
                seed: int) -> dict:
    """Validation sweep over the candidate layers, the choice, then the test sweep at the chosen layer."""
    value = dict(zip(names, values))

    def pairs(split: str):
        ns = fit["names"][split]
        return comparison_pairs(att, ns, np.array([value[n] for n in ns]), config.n_pairs, seed)

    kw = dict(n_random=config.n_random, batch_size=config.batch_size, seed=seed, progress=config.progress,
              max_rows=config.max_rows)
    val = flip_test(model, att, pairs("val"), fit["directions"], config.alphas, **kw)
    choice = choose_flip(val)
    test = flip_test(model, att, pairs("test"), {choice["layer"]: fit["directions"][choice["layer"]]},
                     config.alphas, **kw)
    ai = test["alphas"].index(choice["alpha"])
    any_rate = test["flip_rate_any"]
    out = {"flip": val, "flip_test": test, **{f"best_flip_{k}": v for k, v in choice.items()},
           "flip_rate_pls": any_rate["pattern"][0], "flip_rate_filter": any_rate["filter"][0],
           "flip_rate_random": any_rate["random"][0],
           "flip_rate_pls_token": test["flip_rate_any_token"]["pattern"][0],
           "flip_rate_filter_token": test["flip_rate_any_token"]["filter"][0],
           "flip_rate_random_token": test["flip_rate_any_token"]["random"][0],
           "flip_rate_pls_at_alpha": test["flip_rate"]["pattern"][0][ai],
           "flip_rate_random_at_alpha": test["flip_rate"]["random"][0][ai]}
    r = out["flip_rate_random"]
    out["flip_ratio"] = out["flip_rate_pls"] / r if r > 0 else None
    return out


def _plots():
    from .. import plots

    return plots


def _write_probe(model, config: Config, out, probe: dict, protocol: dict, sw: Stopwatch) -> None:
    write_report(Result("numeric", probe, figures={"r2_per_layer": _plots().numeric_r2(probe)}, config=config,
                        timing=dict(sw.seconds), title=f"Numeric subspace: {probe['attribute']} (probing)",
                        protocol=protocol,
                        artifacts={"probe.json": lambda p: p.write_text(json.dumps(probe, indent=1))}),
                 out, model=model)


def _headlines(report: dict) -> list[Headline]:
    t = report["test"]
    split_r2 = (f"test: {t['n_entities']} held-out entities ({t['n_rows']} mentions); layer {report['best_layer']} "
                f"chosen on validation")
    base = ", ".join(f"{k} {t[k]:.3f}" for k in ("ridge", "pca_linear", "shuffled") if k in t)
    heads = [
        Headline(f"PLS R² of {report['target']}", report["best_r2"], split_r2, target=f"≥ {TARGETS['r2']}",
                 paper=PAPER["r2"], met=report["best_r2"] >= TARGETS["r2"],
                 note=f"same layer, fitted on train: {base}; validation R² {report['best_r2_val']:.3f}"),
        Headline("R² of PLS on shuffled targets", t["shuffled"], split_r2, note="what chance structure scores"),
    ]
    if "flip_test" not in report:
        return heads
    ft = report["flip_test"]
    split_flip = (f"test: {ft['n_pairs']} comparison prompts among test entities; layer {report['best_flip_layer']} "
                  f"chosen on validation")
    ratio = report["flip_ratio"]
    met = (ratio is not None and ratio >= TARGETS["flip_ratio"]) or (ratio is None and report["flip_rate_pls"] > 0)
    any_alpha = f"{split_flip}; flip at any of {len(ft['alphas'])} α"
    return heads + [
        Headline("flip rate, PLS direction (x_weights·scale, as the paper's code)", report["flip_rate_pls"], any_alpha,
                 target=f"≥ {TARGETS['flip_ratio']}× random", paper=PAPER["flips"], met=met,
                 note=f"greedy next token changes (the official code's count): {report['flip_rate_pls_token']:.3f}"),
        Headline("flip rate, PLS read-out direction (x_weights/scale)", report["flip_rate_filter"], any_alpha,
                 note=f"next token changes: {report['flip_rate_filter_token']:.3f}"),
        Headline("flip rate, random unit directions", report["flip_rate_random"], any_alpha,
                 note=f"mean over {ft['n_random']}; next token changes: {report['flip_rate_random_token']:.3f}"),
        Headline(f"flip rate at one α ({report['best_flip_alpha']}), PLS", report["flip_rate_pls_at_alpha"],
                 f"{split_flip}, α chosen on validation",
                 note=f"random at that α: {report['flip_rate_random_at_alpha']:.3f}"),
        Headline("baseline accuracy on the test comparison prompts", ft["baseline_accuracy"], split_flip,
                 note=f"Yes rate {ft['baseline_yes_rate']:.2f}"),
    ]


def _result(model, config: Config, out, report: dict, per_seed: dict, protocol: dict, sw: Stopwatch) -> Result:
    plots = _plots()
    headlines = _headlines(report)
    seeds = list(per_seed)
    if config.seeds:  # mean ± spread over seeds of every headline number
        all_heads = {s: _headlines(dict(report, **per_seed[s])) for s in seeds}
        summaries, merged = {}, []
        for i, h in enumerate(headlines):
            summ = summaries[h.name] = seed_summary({s: all_heads[s][i].value for s in seeds})
            merged.append(Headline(h.name, summ["mean"], f"{h.split} (first seed); mean over seeds {seeds}",
                                   target=h.target, paper=h.paper,
                                   note=f"± {summ['std']:.3f} (sd over {summ['n']} seeds; range "
                                        f"{summ['min']:.3f}..{summ['max']:.3f})"))
        headlines = merged
        report["seeds"] = {"seeds": seeds, "headlines": summaries,
                           "per_seed": {str(s): {k: v for k, v in r.items() if not isinstance(v, (dict, list))}
                                        for s, r in per_seed.items()}}
    r2_met = report["best_r2"] >= TARGETS["r2"]
    conclusion = (f"{model.name}, attribute {report['attribute']} ({report['n_entities']} entities kept): on held-out "
                  f"test entities the residual stream at the entity's last token predicts {report['target']} with R² "
                  f"{report['best_r2']:.3f} at layer {report['best_layer']} (chosen on validation; shuffled targets "
                  f"{report['test']['shuffled']:.3f}; {'meets' if r2_met else 'misses'} the target of "
                  f"{TARGETS['r2']}).")
    if "flip_test" in report:
        conclusion += (f" Adding α·u at the second entity (any α of {len(config.alphas)}) at layer "
                       f"{report['best_flip_layer']} flips {report['flip_rate_pls']:.3f} of the test answers for the "
                       f"PLS direction, {report['flip_rate_filter']:.3f} for its read-out direction and "
                       f"{report['flip_rate_random']:.3f} for random directions.")
    if config.seeds:
        conclusion = f"Over seeds {seeds} (each: another entity split, pairs and random directions). First seed: " \
                     + conclusion
    rows = [{"layer": layer, "PLS R² (validation)": report["pls_r2"][j],
             **{f"{k} (validation)": v[j] for k, v in report["baselines"].items()}}
            for j, layer in enumerate(report["layers"])]
    tables = {"R² per layer": rows}
    figures = {"r2_per_layer": plots.numeric_r2(report),
               "pls_plane": plots.numeric_plane(report["projection"], report["target"], report["best_layer"])}
    if "flip_test" in report:
        fl, ft = report["flip"], report["flip_test"]
        names = [n for n in fl["flip_rate_any"]]
        tables["flip rates (any α)"] = [
            {"layer": layer, "split": split, **{n: f["flip_rate_any"][n][li] for n in names},
             **{f"{n} (next token)": f["flip_rate_any_token"][n][li] for n in names}}
            for split, f in (("validation", fl), ("test", ft)) for li, layer in enumerate(f["layers"])]
        figures["flips"] = plots.numeric_flips(fl)
    result = Result("numeric", report, figures=figures, headlines=headlines, conclusion=conclusion, config=config,
                    timing=dict(sw.seconds, total_s=sw.total), tables=tables,
                    title=f"Numeric subspace: {report['attribute']}", protocol=protocol)
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


def flip_test(model, att: Attribute, pairs: Sequence[tuple[str, str, bool]], directions: dict,
              alphas: Sequence[float] = PAPER_ALPHAS, n_random: int = 3, batch_size: int = 16, seed: int = 0,
              progress: bool = True, max_rows: int = 256) -> dict:
    """Add α·u to resid_post.L at b's last token for every α; count Yes/No answers that change.

    ``directions[L]`` maps names to direction vectors at layer L (``{"pattern": u, "filter": w}``; a
    bare vector is read as ``{"pattern": u}``); each is scaled to unit norm, and ``n_random`` random
    unit directions are added as "random_k" (the same at every layer). α is absolute (the official
    code divides α by the vector's norm), so the edit has norm |α|.

    One forward per batch records every layer's residual and the baseline answers; ``sweep`` then
    stacks every (direction, α) edit of that batch into the batch dimension and re-runs only the
    blocks above L (``model.last_logits(start_layer=L + 1, resid=...)``) with ``AddPerPrompt`` at
    ``resid_pre.{L+1}`` (the same tensor as ``resid_post.L``).

    Returns per layer: ``flip_rate[name][layer][alpha]`` (the Yes/No answer, the sign of
    ``logit_diff``, changes at that α), ``flip_rate_any[name][layer]`` (changes at any α: the paper's
    count), ``flip_rate_any_token`` (the greedy next token changes at any α: the official code's
    count); "random" is the mean over the random directions; plus the baseline accuracy and Yes rate.
    """
    layers = sorted(directions)
    if any(not 0 <= layer < model.n_layers - 1 for layer in layers):
        raise InterpError(f"flip layers must be in 0..{model.n_layers - 2} (the edit feeds the next block)")
    alphas = [float(a) for a in alphas]
    dirs = {layer: directions[layer] if isinstance(directions[layer], dict) else {"pattern": directions[layer]}
            for layer in layers}
    names = list(dirs[layers[0]]) if layers else []
    if any(list(d) != names for d in dirs.values()):
        raise InterpError("every flip layer needs the same named directions")
    rand = _random_units(model.d_model, n_random, seed + 1)
    vecs = {}
    for layer in layers:
        v = torch.stack([torch.as_tensor(np.asarray(dirs[layer][n]), dtype=torch.float32) for n in names] + list(rand))
        vecs[layer] = v / v.norm(dim=1, keepdim=True)
    all_names = names + [f"random_{k}" for k in range(n_random)]
    prompts = [att.compare.format(a=a, b=b) for a, b, _ in pairs]
    truth = np.array([t for _, _, t in pairs])
    pos_b = [p[0] for p in entity_positions(model, prompts, [b for _, b, _ in pairs])]
    enc = model.encode(prompts)
    n, n_al = len(pairs), len(alphas)
    changed = np.zeros((len(layers), len(all_names), n_al, n), dtype=bool)  # Yes/No answer changed
    tok_changed = np.zeros_like(changed)  # greedy next token changed
    base_yes = np.zeros(n, dtype=bool)
    answers, label = None, ""
    steps = range(0, n, batch_size)
    bar = tqdm(total=len(steps) * len(layers), desc="flip test", unit="layer-batch", disable=not progress)
    for s in steps:
        rows = list(range(s, min(s + batch_size, n)))
        batch = model.pad([enc.ids[i] for i in rows])
        if answers is None:
            yes_id, no_id, label = answer_tokens(model, batch)
            answers = torch.tensor([[yes_id, no_id]])
        # one forward gives the baseline answer and every flip layer's residual, reused below
        with recording(model, [f"resid_post.{layer}" for layer in layers]) as cache:
            logits = model.last_logits(batch).float()
        said_yes = (logit_diff(logits, answers.expand(len(rows), 2)) > 0).cpu().numpy()
        said_tok = logits.argmax(-1).cpu().numpy()
        base_yes[rows] = said_yes
        # b's last token as a mask over each prompt's own tokens (row-aligned with the stacked edits)
        width = max(len(enc.ids[i]) for i in rows)
        at = torch.zeros(len(rows), width, dtype=torch.bool)
        at[torch.arange(len(rows)), torch.tensor([pos_b[i] for i in rows])] = True
        for li, layer in enumerate(layers):
            diff, tok = sweep(model, batch, cache[f"resid_post.{layer}"], layer, at, vecs[layer], alphas, answers,
                              max_rows)
            changed[li][:, :, rows] = (diff > 0) != said_yes
            tok_changed[li][:, :, rows] = tok != said_tok
            bar.update(1)
    bar.close()

    def rates(per_alpha: bool, flags: np.ndarray) -> dict:
        r = flags.mean(-1) if per_alpha else flags.any(2).mean(-1)  # [layers, vectors(, alphas)]
        out = {name: r[:, vi].tolist() for vi, name in enumerate(names)}
        out["random"] = r[:, len(names):].mean(1).tolist()
        return out

    any_rand = changed[:, len(names):].any(2).mean(-1)  # [layers, n_random]
    result = {"layers": layers, "alphas": alphas, "directions": names, "answer_tokens": label, "n_pairs": n,
              "n_random": n_random, "baseline_accuracy": float((base_yes == truth).mean()),
              "baseline_yes_rate": float(base_yes.mean()),
              "flip_rate": rates(True, changed), "flip_rate_any": rates(False, changed),
              "flip_rate_any_token": rates(False, tok_changed),
              "flip_rate_random_per_direction": any_rand.tolist()}
    # the older keys: the per-α grids of the first direction and of random
    result["flip_rate_pls"] = result["flip_rate"][names[0]] if names else []
    result["flip_rate_random"] = result["flip_rate"]["random"]
    return result


def sweep(model, batch: dict, resid: torch.Tensor, layer: int, at: torch.Tensor, vectors: torch.Tensor,
          alphas: Sequence[float], answers: torch.Tensor, max_rows: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Yes−No logit difference and greedy next token after adding α·v at ``resid_post.layer`` for every (v, α).

    ``resid`` is the batch's cached ``resid_post.layer`` [B, seq, d], ``at`` a bool mask [B, tokens] of the
    token to edit in each prompt, ``vectors`` [V, d], ``answers`` [[yes_id, no_id]]. The V·A edits are
    stacked into the batch dimension, at most ``max_rows`` rows per forward (row j·B + i: prompt i under
    edit j), and only the blocks above ``layer`` run, with ``AddPerPrompt`` at ``resid_pre.{layer+1}``;
    the columns before the first edited token cannot change either, so their keys and values are
    computed once (``LeadingColumns``) and each forward runs only the columns from that token on.
    Returns two arrays [V, A, B].
    """
    b = resid.shape[0]
    edits = [(vi, ai) for vi in range(len(vectors)) for ai in range(len(alphas))]
    diff = np.zeros((len(vectors), len(alphas), b))
    tok = np.zeros((len(vectors), len(alphas), b), dtype=np.int64)
    per_forward = max(1, max_rows // b)
    # the first padded column any row edits (left padding: row i's token t sits at column pad_i + t)
    mask = batch["attention_mask"].cpu()
    pad = (mask == 0).sum(1)
    edited = at.nonzero()
    first = int((pad[edited[:, 0]] + edited[:, 1]).min()) if len(edited) else mask.shape[1]
    lead = LeadingColumns.of(model, batch, min(first, mask.shape[1] - 2))  # keep ≥ 2 columns: a prefill
    for c in range(0, len(edits), per_forward):
        part = edits[c:c + per_forward]
        k = len(part)
        delta = torch.stack([float(alphas[ai]) * vectors[vi] for vi, ai in part]).repeat_interleave(b, 0)
        stacked, kw = lead.rest(torch.arange(b).repeat(k))
        with model.intervene({f"resid_pre.{layer + 1}": AddPerPrompt(delta, positions=at.repeat(k, 1))}):
            out = model.last_logits(stacked, start_layer=layer + 1, resid=resid[:, lead.cut:].repeat(k, 1, 1),
                                    **kw).float()
        d = logit_diff(out, answers.expand(len(out), 2)).cpu().numpy().reshape(k, b)
        t = out.argmax(-1).cpu().numpy().reshape(k, b)
        for j, (vi, ai) in enumerate(part):
            diff[vi, ai], tok[vi, ai] = d[j], t[j]
    return diff, tok


def choose_flip(flip: dict, direction: str = "pattern") -> dict:
    """The flip layer (largest any-α gap ``direction`` − random) and, at it, the α with the largest gap.

    Ties go to the earlier layer and the smaller |α|. Made on validation prompts only.

    Example:
        >>> f = {"layers": [3, 7], "alphas": [-1.0, 1.0],
        ...      "flip_rate_any": {"pattern": [0.2, 0.6], "random": [0.1, 0.1]},
        ...      "flip_rate": {"pattern": [[0.1, 0.1], [0.2, 0.5]], "random": [[0.0, 0.1], [0.1, 0.1]]}}
        >>> choose_flip(f)["layer"], choose_flip(f)["alpha"]
        (7, 1.0)
    """
    gap = np.asarray(flip["flip_rate_any"][direction]) - np.asarray(flip["flip_rate_any"]["random"])
    li = int(np.argmax(gap))
    per = np.asarray(flip["flip_rate"][direction][li]) - np.asarray(flip["flip_rate"]["random"][li])
    order = sorted(range(len(per)), key=lambda a: (-per[a], abs(flip["alphas"][a])))
    ai = order[0]
    pls, rnd = flip["flip_rate_any"][direction][li], flip["flip_rate_any"]["random"][li]
    return {"layer": flip["layers"][li], "alpha": flip["alphas"][ai], "flip_rate_pls": float(pls),
            "flip_rate_random": float(rnd), "ratio": float(pls / rnd) if rnd > 0 else None, "split": "validation"}


def default_flip_layers(n_layers: int, k: int = 5) -> list[int]:
    """k layers spread over the early-to-late middle (the paper finds flips early to middle).

    Example:
        >>> default_flip_layers(24)
        [3, 7, 10, 14, 18]
    """
    hi = max(0, min((3 * n_layers) // 4, n_layers - 2))
    lo = min(n_layers // 8, hi)
    return sorted({int(round(x)) for x in np.linspace(lo, hi, k)})
