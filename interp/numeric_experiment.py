"""The numeric-subspace experiment (El-Shangiti et al.): recall filter, per-layer PLS probes, flip test.

1. ``recall_filter``: ask the model each entity's value (greedy, a few
   tokens), parse a number, keep the entities it knows within a tolerance.
2. ``probe_layers``: residual stream at the last token of the entity mention,
   every layer, entity-held-out R² of PLS beside ridge, PCA + linear and
   shuffled targets.
3. ``flip_test``: comparison prompts ("Was X born before Y? Answer Yes or
   No."); add α·u at one layer at Y's last token and count how often the
   Yes/No answer flips, for the PLS direction and random directions of the
   same norm. α is in units of the mean residual norm at that layer.

Example:
    model = interp.load_model("qwen2.5-coder-0.5b-instruct")
    report = run_numeric(model, "birth_year", "runs/birth")
"""
from __future__ import annotations

import csv
import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .analyzers.numeric import NumericSubspace, cross_validate_layers
from .errors import InterpError

DATA = Path(__file__).resolve().parent.parent / "data" / "entities"


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
    from .generation import generate

    att = get_attribute(attribute) if isinstance(attribute, str) else attribute
    tol = att.tolerance if tolerance is None else float(tolerance)
    if tol < 0:
        raise InterpError(f"tolerance must be >= 0, got {tol}")
    answers = generate(model, [att.question.format(e=n) for n in names], max_new_tokens=att.max_new_tokens,
                       batch_size=batch_size, progress=progress)
    parsed = [parse_number(a) for a in answers]
    known = np.zeros(len(names), dtype=bool)
    for i, p in enumerate(parsed):
        if p is None or (att.log10 and p <= 0):
            continue
        guess = math.log10(p) if att.log10 else p
        known[i] = abs(guess - values[i]) <= tol
    return Recall(list(names), np.asarray(values), answers, parsed, known, tol)


# --------------------------------------------------------------- positions
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


def probe_prompts(att: Attribute, names: Sequence[str], seed: int = 0) -> tuple[list[str], list[str]]:
    """Two mentions per entity: the recall question, and the comparison prompt with it as the second entity."""
    rng = np.random.default_rng(seed)
    prompts, ents = [], []
    for i, n in enumerate(names):
        partner = names[(i + 1 + int(rng.integers(len(names) - 1))) % len(names)] if len(names) > 1 else n
        prompts += [att.question.format(e=n), att.compare.format(a=partner, b=n)]
        ents += [n, n]
    return prompts, ents


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
def comparison_pairs(att: Attribute, names: Sequence[str], values: np.ndarray, n_pairs: int,
                     seed: int = 0) -> list[tuple[str, str, bool]]:
    """Balanced (a, b, true answer is Yes) pairs with distinct values; half Yes, half No."""
    if len(names) < 2:
        raise InterpError("the flip test needs at least 2 entities")
    rng = np.random.default_rng(seed)
    pairs = []
    for k in range(n_pairs * 20):
        if len(pairs) >= n_pairs:
            break
        i, j = rng.choice(len(names), 2, replace=False)
        if values[i] == values[j]:
            continue
        lo, hi = (i, j) if values[i] < values[j] else (j, i)
        want_yes = len(pairs) % 2 == 0
        # yes_if=less: "a before b" is Yes when a has the smaller value
        a, b = (lo, hi) if want_yes == (att.yes_if == "less") else (hi, lo)
        pairs.append((names[a], names[b], want_yes))
    if len(pairs) < 2:
        raise InterpError("could not form comparison pairs: the entities' values are all equal")
    return pairs


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


def flip_test(model, att: Attribute, pairs: Sequence[tuple[str, str, bool]], directions: dict[int, np.ndarray],
              alphas: Sequence[float], norms: dict[int, float], n_random: int = 3, batch_size: int = 16,
              seed: int = 0, progress: bool = True) -> dict:
    """Add ±α·norm·u at resid_post.L at b's last token; count Yes/No answer flips.

    ``directions[L]`` is the unit direction along which the value grows at
    layer L; ``norms[L]`` the mean residual norm there. Each prompt is pushed
    the way that should flip its baseline answer (toward No if it said Yes).
    Random controls: ``n_random`` unit directions with the same push.
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
    d = model.d_model
    rand = _random_units(d, n_random, seed + 1)
    dirs = {layer: torch.as_tensor(directions[layer], dtype=torch.float32) for layer in layers}
    n_al = len(alphas)
    flips = {"pls": np.zeros((len(layers), n_al)), "random": np.zeros((len(layers), n_al, n_random))}
    base_yes = np.zeros(len(pairs), dtype=bool)
    margin = np.zeros(len(pairs))
    yes_id = no_id = None
    label = ""
    steps = range(0, len(prompts), batch_size)
    bar = tqdm(total=len(steps) * len(layers), desc="flip test", unit="layer-batch", disable=not progress)
    for s in steps:
        rows = list(range(s, min(s + batch_size, len(prompts))))
        batch = model.pad([enc.ids[i] for i in rows])
        width = batch["input_ids"].shape[1]
        cols = torch.tensor([width - len(enc.ids[i]) + pos_b[i] for i in rows])
        if yes_id is None:
            yes_id, no_id, label = answer_tokens(model, batch)
        cache: dict[int, torch.Tensor] = {}

        def reader(layer):
            def read(x):
                cache[layer] = x.detach().clone()
            return read

        # one forward gives the baseline answer and every flip layer's residual, reused below
        with model.hooks({f"resid_post.{layer}": reader(layer) for layer in layers}):
            logits = model.last_logits(batch).float()
        diff = (logits[:, yes_id] - logits[:, no_id]).cpu().numpy()
        said_yes = diff > 0
        base_yes[rows] = said_yes
        margin[rows] = diff
        # push b's value up when that should turn the answer to Yes (yes_if=less) / to No (greater)
        up = torch.tensor([(not y) == (att.yes_if == "less") for y in said_yes])
        sign = torch.where(up, 1.0, -1.0)
        ar = torch.arange(len(rows))
        for li, layer in enumerate(layers):
            h = cache[layer]
            vecs = [dirs[layer]] + [rand[k] for k in range(n_random)]
            for ai, alpha in enumerate(alphas):
                for vi, v in enumerate(vecs):
                    edited = h.clone()
                    delta = (alpha * norms[layer]) * sign[:, None] * v[None]
                    edited[ar, cols] += delta.to(edited.dtype)
                    out = model.last_logits(batch, start_layer=layer + 1, resid=edited).float()
                    now_yes = (out[:, yes_id] - out[:, no_id]).cpu().numpy() > 0
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


# --------------------------------------------------------------- experiment
def default_flip_layers(n_layers: int, k: int = 5) -> list[int]:
    """k layers spread over the early-to-late middle (the paper finds flips early to middle)."""
    hi = max(0, min((3 * n_layers) // 4, n_layers - 2))
    lo = min(n_layers // 8, hi)
    return sorted({int(round(x)) for x in np.linspace(lo, hi, k)})


def run_numeric(model, attribute: str, out_dir: str | Path | None = None, *, max_entities: int = 300,
                tolerance: float | None = None, filter_known: bool = True, layers: Sequence[int] | None = None,
                flip_layers: Sequence[int] | None = None, alphas: Sequence[float] = (0.25, 0.5, 1.0, 2.0),
                n_pairs: int = 64, n_random: int = 3, n_components: int = 5, n_splits: int = 5,
                batch_size: int = 16, seed: int = 0, data_dir: str | Path | None = None,
                progress: bool = True) -> dict:
    """Recall filter, per-layer probing and the flip test; writes report.json/html when ``out_dir`` is set."""
    att = get_attribute(attribute)
    t0 = time.time()
    names, values = load_entities(att, max_entities, data_dir)
    report: dict = {"model": model.describe(), "attribute": att.name, "table": att.table, "column": att.column,
                    "target": f"log10({att.column})" if att.log10 else att.column, "n_components": n_components,
                    "n_splits": n_splits, "seed": seed, "filter_known": filter_known}
    if filter_known:
        rec = recall_filter(model, att, names, values, tolerance, batch_size, progress)
        report["recall"] = rec.summary()
        report["recall"]["examples"] = [{"entity": n, "value": float(v), "answer": a}
                                        for n, v, a in list(zip(names, values, rec.answers))[:20]]
        names = [n for n, k in zip(names, rec.known) if k]
        values = values[rec.known]
    report["n_entities"] = len(names)
    if len(names) < n_splits:
        raise InterpError(f"only {len(names)} entities survive the recall filter for {att.name}, fewer than "
                          f"{n_splits} folds; loosen --tolerance or pass --no-filter")
    layers = list(range(model.n_layers)) if layers is None else list(layers)
    X, ents = capture_entities(model, att, names, layers, batch_size, progress, seed)
    y = np.repeat(values, 2)
    cv = cross_validate_layers(X, y, ents, n_components, n_splits, seed=seed, progress=progress)
    report["layers"] = layers
    report["pls_r2"] = cv.pop("pls")
    report["baselines"] = cv
    best = int(np.nanargmax(report["pls_r2"]))
    report["best_layer"] = layers[best]
    report["best_r2"] = report["pls_r2"][best]
    if out_dir is not None:  # the probing results survive an interrupted flip test
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "probe.json").write_text(json.dumps(report, indent=1))
    flip_layers = default_flip_layers(model.n_layers) if flip_layers is None else list(flip_layers)
    flip_layers = [layer for layer in flip_layers if layer < model.n_layers - 1]
    if not flip_layers:
        raise InterpError(f"no flip layer left: they must be below the last layer ({model.n_layers - 1})")
    missing = [layer for layer in flip_layers if layer not in layers]
    if missing:
        raise InterpError(f"flip layers {missing} were not probed; include them in layers")
    directions, norms = {}, {}
    for layer in flip_layers:
        Xl = X[layers.index(layer)]
        directions[layer] = NumericSubspace(n_components).fit(Xl, y).direction_
        norms[layer] = float(np.linalg.norm(Xl, axis=1).mean())
    pairs = comparison_pairs(att, names, values, n_pairs, seed)
    flip = flip_test(model, att, pairs, directions, alphas, norms, n_random, batch_size, seed, progress)
    flip["residual_norms"] = {str(k): v for k, v in norms.items()}
    report["flip"] = flip
    report.update({f"best_flip_{k}": v for k, v in best_flip(flip).items()})
    report["flip_rate_pls"] = report["best_flip_flip_rate_pls"]
    report["flip_rate_random"] = report["best_flip_flip_rate_random"]
    bl = layers.index(report["best_layer"])
    est = NumericSubspace(min(n_components, 2) if n_components >= 2 else 1).fit(X[bl], y)
    report["projection"] = {"entities": ents[::2], "values": values.tolist(),
                            "xy": est.transform(X[bl][::2])[:, :2].tolist()}
    report["seconds"] = round(time.time() - t0, 1)
    if out_dir is not None:
        write_report(report, out_dir)
    return report


def write_report(report: dict, out_dir: str | Path) -> Path:
    """report.json plus report.html (R² vs layer, flip rate vs α, entities in the 2-D PLS plane)."""
    import plotly.graph_objects as go

    from .plots import write_html

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    layers = report["layers"]
    r2fig = go.Figure()
    for name, ys in [("PLS", report["pls_r2"])] + list(report["baselines"].items()):
        r2fig.add_trace(go.Scatter(x=layers, y=ys, mode="lines+markers", name=name))
    r2fig.update_layout(title=f"Entity-held-out R² of {report['target']} ({report['n_entities']} entities)",
                        xaxis_title="layer", yaxis_title="R²", template="plotly_white")
    flip = report["flip"]
    ffig = go.Figure()
    for li, layer in enumerate(flip["layers"]):
        ffig.add_trace(go.Scatter(x=flip["alphas"], y=flip["flip_rate_pls"][li], mode="lines+markers",
                                  name=f"PLS, layer {layer}"))
        ffig.add_trace(go.Scatter(x=flip["alphas"], y=flip["flip_rate_random"][li], mode="lines+markers",
                                  line={"dash": "dot"}, name=f"random, layer {layer}"))
    ffig.update_layout(title=f"Answer flips ({flip['n_pairs']} prompts, baseline accuracy "
                       f"{flip['baseline_accuracy']:.2f})", xaxis_title="α (× mean residual norm)",
                       yaxis_title="flip rate", template="plotly_white")
    proj = report["projection"]
    xy = np.asarray(proj["xy"])
    marker = {"color": proj["values"], "colorscale": "Viridis", "showscale": True,
              "colorbar": {"title": report["target"]}}
    pfig = go.Figure(go.Scatter(x=xy[:, 0], y=xy[:, 1] if xy.shape[1] > 1 else np.zeros(len(xy)), mode="markers",
                                text=proj["entities"], marker=marker))
    pfig.update_layout(title=f"Entities in the first two PLS components, layer {report['best_layer']}",
                       xaxis_title="PLS 1", yaxis_title="PLS 2", template="plotly_white")
    intro = (f"{report['model']['model']}, attribute {report['attribute']}: best layer {report['best_layer']} "
             f"R² {report['best_r2']:.3f}; flips at layer {report['best_flip_layer']}, "
             f"α {report['best_flip_alpha']}: "
             f"PLS {report['flip_rate_pls']:.3f} vs random {report['flip_rate_random']:.3f}.")
    return write_html([r2fig, ffig, pfig], out / "report.html", title=f"Numeric subspace: {report['attribute']}",
                      intro=intro)
