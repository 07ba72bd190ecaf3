"""Plotly figures a notebook can show and a report can embed.

Example:
    >>> fig = layer_lines({"accuracy": [0.5, 0.9]}, title="probe", yaxis="accuracy")
    >>> fig.layout.title.text
    'probe'
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import plotly.graph_objects as go


def layer_lines(series: Mapping[str, Sequence[float]], title: str = "", yaxis: str = "",
                bands: Mapping[str, tuple[Sequence[float], Sequence[float]]] | None = None) -> go.Figure:
    """One line per series against layer index, with optional (low, high) bands."""
    fig = go.Figure()
    for name, ys in series.items():
        xs = list(range(len(ys)))
        if bands and name in bands:
            lo, hi = bands[name]
            fig.add_trace(go.Scatter(x=xs + xs[::-1], y=list(hi) + list(lo)[::-1], fill="toself", opacity=0.2,
                                     line={"width": 0}, showlegend=False, hoverinfo="skip", name=f"{name} CI"))
        fig.add_trace(go.Scatter(x=xs, y=list(ys), mode="lines+markers", name=name))
    fig.update_layout(title=title, xaxis_title="layer", yaxis_title=yaxis, template="plotly_white")
    return fig


# --- refusal ---

_REFUSAL_TITLES = {
    "bypass": "bypass: refusal metric on harmful prompts, direction ablated (lower is better)",
    "induce": "induce: refusal metric on harmless prompts, +r at its layer (higher is better)",
    "kl": "KL on harmless prompts under ablation (lower is better)",
}


def position_labels(tokens: Sequence[str]) -> list[str]:
    """One label per post-instruction position, "−4 '\\n'": the offset keeps equal tokens apart."""
    n = len(tokens)
    return [f"\u2212{n - i} {tok!r}" for i, tok in enumerate(tokens)]


def _passes(report: dict, layer: int, pos: int) -> bool | None:
    sel = report["selection"]
    if "passes" in sel:
        return sel["passes"][layer][pos]
    f = report.get("filters") or {k: report.get("config", {}).get(k) for k in ("kl_max", "induce_min", "max_layer_frac")}
    b, i, k = (sel[m][layer][pos] for m in ("bypass", "induce", "kl"))
    if None in (b, i, k) or None in f.values():
        return None
    n_layers = len(sel["bypass"])
    return i >= f["induce_min"] and k <= f["kl_max"] and layer < int(f["max_layer_frac"] * n_layers)  # official cutoff


def refusal_heatmaps(report: dict) -> dict[str, go.Figure]:
    """Layer × post-instruction position heatmaps of the refusal search, one per score.

    Fully scored candidates are drawn solid, the rest with their cheap proxy score (faded, hover says
    "proxy"); every position has its own column (labelled "−4 '\\n'"); the chosen candidate carries an
    ×, and fully scored candidates that pass the selection filters are outlined.

    Example:
        figs = refusal_heatmaps(result.report)      # the report of interp.experiments.refusal.run
        figs["bypass"].show()
    """
    sel, chosen = report["selection"], report["chosen"]
    tokens = report["post_instruction_tokens"]
    n_pos = len(tokens)
    labels = position_labels(tokens)
    xs = list(range(-n_pos, 0))
    n_layers = len(sel["bypass"])
    ys = list(range(n_layers))
    passing = [(p - n_pos, layer) for layer in ys for p in range(n_pos) if _passes(report, layer, p)]
    figs = {}
    for key, title in _REFUSAL_TITLES.items():
        full = sel.get(key) or [[None] * n_pos for _ in ys]
        proxy = sel.get(f"proxy_{key}") or [[None] * n_pos for _ in ys]

        def grid(src, only_where_full_missing: bool):
            return [[(None if (only_where_full_missing and full[y][p] is not None) else src[y][p])
                     for p in range(n_pos)] for y in ys]

        z_full, z_proxy = grid(full, False), grid(proxy, True)
        values = [v for g in (z_full, z_proxy) for row in g for v in row if v is not None and not math.isnan(v)]
        lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
        common = dict(x=xs, y=ys, zmin=lo, zmax=hi, colorscale="RdBu_r", xgap=1, ygap=1)
        fig = go.Figure()
        fig.add_trace(go.Heatmap(z=z_proxy, opacity=0.45, name="proxy score (few prompts)", showscale=False,
                                 hovertemplate="layer %{y}, position %{x}: %{z:.3f} (proxy)<extra></extra>", **common))
        fig.add_trace(go.Heatmap(z=z_full, name="full score", colorbar={"title": key},
                                 hovertemplate="layer %{y}, position %{x}: %{z:.3f} (full score)<extra></extra>",
                                 **common))
        if passing:
            fig.add_trace(go.Scatter(x=[p for p, _ in passing], y=[y for _, y in passing], mode="markers",
                                     name="passes the filters", hoverinfo="skip",
                                     marker={"symbol": "square-open", "size": 16, "color": "#1a7f37",
                                             "line": {"width": 2}}))
        fig.add_trace(go.Scatter(x=[chosen["position"]], y=[chosen["layer"]], mode="markers", name="chosen",
                                 marker={"symbol": "x", "size": 14, "color": "black"}))
        n_full = sum(v is not None for row in z_full for v in row)
        sub = (f"solid: full score ({n_full} candidates); faded: cheap proxy score; "
               "× chosen; green outline: passes the selection filters")
        fig.update_layout(title={"text": f"{title}<br><sup>{sub}</sup>"},
                          xaxis_title="post-instruction position (offset and token)",
                          yaxis_title="layer", template="plotly_white", height=max(360, 16 * n_layers + 160),
                          legend={"orientation": "h", "y": -0.18},
                          xaxis={"tickmode": "array", "tickvals": xs, "ticktext": labels, "range": [-n_pos - 0.5, -0.5]})
        figs[key] = fig
    return figs


def refusal_rates(evaluation: Mapping[str, float]) -> go.Figure:
    """Refusal rate on held-out prompts per condition (baseline, r̂ ablated, −r; harmless, +r), as bars.

    ``evaluation`` is the refusal report's ``evaluation`` (``baseline_refusal``, ``ablated_refusal``, ...).

    Example:
        >>> ev = {"baseline_refusal": 0.7, "ablated_refusal": 0.0, "minus_r_refusal": 0.1,
        ...       "baseline_harmless_refusal": 0.05, "induced_refusal": 0.8, "n_harmful": 8, "n_harmless": 8}
        >>> [round(v, 2) for v in refusal_rates(ev).data[0].y]
        [0.7, 0.0, 0.1, 0.05, 0.8]
    """
    keys = {"harmful": "baseline_refusal", "harmful, r̂ ablated": "ablated_refusal", "harmful, −r": "minus_r_refusal",
            "harmless": "baseline_harmless_refusal", "harmless, +r": "induced_refusal"}
    counts = [evaluation.get("n_harmful")] * 3 + [evaluation.get("n_harmless")] * 2
    fig = go.Figure(go.Bar(x=list(keys), y=[evaluation[k] for k in keys.values()],
                           marker_color=["#a11", "#e88", "#e88", "#26a", "#8ad"],
                           customdata=counts, hovertemplate="%{x}: %{y:.2f} of %{customdata} prompts<extra></extra>"))
    fig.update_layout(title="refusal rate on held-out prompts (greedy completions)", yaxis_range=[0, 1],
                      yaxis_title="fraction refused", template="plotly_white")
    return fig


# --- rank and sae ---

def rank_per_layer(report: Mapping) -> go.Figure:
    """k99/d against layer, one line per site with its bootstrap band (the rank experiment's report).

    Example:
        >>> r = {"layers": [2, 5], "threshold": 0.99, "n_tokens": 100, "relative_k99": {"attn_out": [0.4, 0.5]},
        ...      "ci": {"attn_out": [[0.3, 0.4], [0.4, 0.5]]}}
        >>> [list(t.y) for t in rank_per_layer(r).data if t.mode == "lines+markers"]
        [[0.4, 0.5]]
    """
    fig = go.Figure()
    xs = list(report["layers"])
    for n, ys in report["relative_k99"].items():
        lo, hi = zip(*report["ci"][n])
        fig.add_trace(go.Scatter(x=xs + xs[::-1], y=list(hi) + list(lo)[::-1], fill="toself", opacity=0.2,
                                 line={"width": 0}, showlegend=False, hoverinfo="skip", name=f"{n} CI"))
        fig.add_trace(go.Scatter(x=xs, y=list(ys), mode="lines+markers", name=n))
    fig.update_layout(title=f"k{round(report['threshold'] * 100)} / d per layer ({report['n_tokens']} tokens; "
                      f"bands: bootstrap CI)", xaxis_title="layer", yaxis_title="relative rank",
                      template="plotly_white")
    return fig


def rank_spectra(eigenvalues: Mapping[str, Sequence[float]], threshold: float = 0.99) -> go.Figure:
    """Cumulative explained variance against k/d, one line per site (e.g. ``{"attn_out.3": eigenvalues}``).

    Where a line crosses the dashed ``threshold`` is that site's relative rank.

    Example:
        >>> fig = rank_spectra({"attn_out.0": [3.0, 1.0], "mlp_out.0": [1.0, 1.0]})
        >>> [round(v, 2) for v in fig.data[0].y]
        [0.75, 1.0]
    """
    fig = go.Figure()
    for key, ev in eigenvalues.items():
        ev = sorted((max(float(v), 0.0) for v in ev), reverse=True)
        total = sum(ev) or 1.0
        cum, acc = [], 0.0
        for v in ev:
            acc += v
            cum.append(acc / total)
        d = len(ev)
        fig.add_trace(go.Scatter(x=[(i + 1) / d for i in range(d)], y=cum, mode="lines", name=key))
    fig.add_hline(y=threshold, line_dash="dash", line_color="#888")
    fig.update_layout(title="PCA spectra: variance explained by the top k components", xaxis_title="k / d",
                      yaxis_title="cumulative variance fraction", template="plotly_white")
    return fig


def sae_training_curves(histories: Mapping[str, Sequence[Mapping]]) -> dict[str, go.Figure]:
    """Dead fraction, explained variance and L0 against training tokens, one line per run (e.g. per init).

    ``histories`` maps a run name to ``train_sae``'s history rows (``tokens``, ``dead_fraction``,
    ``explained_variance``, ``l0``).

    Example:
        >>> h = {"active": [{"tokens": 512, "dead_fraction": 0.1, "explained_variance": 0.2, "l0": 32.0}]}
        >>> sorted(sae_training_curves(h))
        ['dead_fraction', 'explained_variance', 'l0']
    """
    figs = {}
    for metric, title in (("dead_fraction", "dead fraction (training window)"),
                          ("explained_variance", "explained variance (training batch)"), ("l0", "L0")):
        fig = go.Figure()
        for name, rows in histories.items():
            fig.add_trace(go.Scatter(x=[h["tokens"] for h in rows], y=[h[metric] for h in rows], mode="lines",
                                     name=name))
        fig.update_layout(title=title, xaxis_title="training tokens", yaxis_title=metric, template="plotly_white")
        figs[metric] = fig
    return figs


# --- patching ---

def patching_heatmaps(sweep: Mapping) -> dict[str, go.Figure]:
    """One layer × position heatmap per swept site (layer × head for ``attn_z``), 1 = clean behaviour.

    ``sweep`` is ``report["sweep"]`` of the patching experiment; columns are
    labelled with the task's roles ("-5 (S2)") where it names them.
    """
    figs = {}
    roles = sweep.get("roles", {})
    labels = [f"{p} ({roles[str(p)]})" if str(p) in roles else str(p) for p in sweep["positions"]]
    for name, grid in sweep["effects"].items():
        heads = name == "attn_z"
        x = list(range(len(grid[0]))) if heads and grid else labels
        fig = go.Figure(go.Heatmap(z=grid, x=x, y=sweep["layers"], colorscale="RdBu", zmid=0,
                                   colorbar={"title": "effect"}))
        fig.update_layout(title=f"patching {name} from clean into corrupted (1 = clean behaviour)",
                          xaxis_title="head" if heads else "position (from the end)", yaxis_title="layer",
                          template="plotly_white")
        figs[f"patching {name}"] = fig
    return figs


def illusion_fractions(subspaces: Mapping) -> go.Figure:
    """Grouped bars: fraction of effect of the full component, the DAS direction and its two parts, per site."""
    fig = go.Figure()
    for r in subspaces.values():
        f = dict(r["fraction_of_effect"])
        if r.get("random_effect"):
            f["random (mean)"] = sum(r["random_effect"]) / len(r["random_effect"])
        fig.add_trace(go.Bar(name=r["site"], x=list(f), y=list(f.values())))
    fig.update_layout(title="fraction of effect on test pairs (0 = corrupted, 1 = clean): full component, DAS "
                            "direction, its rowspace and nullspace parts (each along its unit vector), random",
                      barmode="group", template="plotly_white")
    return fig


# --- numeric ---

def numeric_r2(report: Mapping) -> go.Figure:
    """R² per layer: PLS and each baseline (the numeric experiment's report: validation entities, fitted on train).

    Example:
        >>> r = {"layers": [0, 1], "pls_r2": [0.1, 0.8], "baselines": {"ridge": [0.0, 0.7]}, "target": "year",
        ...      "n_entities": 40}
        >>> [t.name for t in numeric_r2(r).data]
        ['PLS', 'ridge']
    """
    fig = go.Figure()
    for name, ys in [("PLS", report["pls_r2"])] + list(report["baselines"].items()):
        fig.add_trace(go.Scatter(x=list(report["layers"]), y=list(ys), mode="lines+markers", name=name))
    split = report.get("r2_split", "entity-held-out")
    fig.update_layout(title=f"{split} R² of {report['target']} ({report['n_entities']} entities in all)",
                      xaxis_title="layer", yaxis_title="R²", template="plotly_white")
    return fig


def numeric_flips(flip: Mapping) -> go.Figure:
    """Flip rate against α per flip layer: each direction (PLS pattern solid, filter dashed, random dotted).

    ``flip`` is a flip-test result: ``flip_rate[name][layer][alpha]`` (or the older ``flip_rate_pls`` and
    ``flip_rate_random`` grids).

    Example:
        >>> f = {"layers": [3], "alphas": [-1.0, 1.0], "flip_rate": {"pattern": [[0.1, 0.4]], "filter": [[0.0, 0.2]],
        ...      "random": [[0.0, 0.1]]}, "n_pairs": 16, "baseline_accuracy": 0.75}
        >>> len(numeric_flips(f).data)
        3
    """
    rates = flip.get("flip_rate") or {"pattern": flip["flip_rate_pls"], "random": flip["flip_rate_random"]}
    dash = {"pattern": "solid", "filter": "dash", "random": "dot"}
    fig = go.Figure()
    for li, layer in enumerate(flip["layers"]):
        for name, grid in rates.items():
            fig.add_trace(go.Scatter(x=list(flip["alphas"]), y=list(grid[li]), mode="lines+markers",
                                     line={"dash": dash.get(name, "solid")}, name=f"{name}, layer {layer}"))
    fig.update_layout(title=f"Answer flips ({flip['n_pairs']} prompts, baseline accuracy "
                      f"{flip['baseline_accuracy']:.2f})", xaxis_title="α (edit α·u, u a unit vector)",
                      yaxis_title="flip rate", template="plotly_white")
    return fig


def numeric_plane(projection: Mapping, target: str = "value", layer: int | None = None) -> go.Figure:
    """Entities in the first two PLS components, coloured by their value (``projection``: entities, values, xy).

    Example:
        >>> p = {"entities": ["a", "b"], "values": [1.0, 2.0], "xy": [[0.0, 1.0], [1.0, 0.0]]}
        >>> list(numeric_plane(p, "year", 4).data[0].x)
        [0.0, 1.0]
    """
    xy = [list(p) for p in projection["xy"]]
    ys = [p[1] if len(p) > 1 else 0.0 for p in xy]
    marker = {"color": list(projection["values"]), "colorscale": "Viridis", "showscale": True,
              "colorbar": {"title": target}}
    fig = go.Figure(go.Scatter(x=[p[0] for p in xy], y=ys, mode="markers", text=list(projection["entities"]),
                               marker=marker))
    where = f", layer {layer}" if layer is not None else ""
    fig.update_layout(title=f"Entities in the first two PLS components{where}", xaxis_title="PLS 1",
                      yaxis_title="PLS 2", template="plotly_white")
    return fig


# --- binding ---

def binding_accuracy(report: Mapping) -> go.Figure:
    """Test accuracy per layer of each pairwise probe kind, beside the majority-class baseline.

    ``report`` is the binding experiment's report (``layers``, ``accuracy``, ``majority_baseline``,
    ``class_balance``, ``task``; with ``selected_on == "cross"`` the cross-mention pairs are drawn:
    ``accuracy_cross``, ``majority_baseline_cross``, ``pairs``).
    """
    xs = list(report["layers"])
    cross = report.get("selected_on") == "cross" and "accuracy_cross" in report
    acc = report["accuracy_cross"] if cross else report["accuracy"]
    maj = report["majority_baseline_cross"] if cross else report["majority_baseline"]
    balance = report["pairs"]["cross"]["test"]["class_balance"] if cross else report["class_balance"]
    fig = go.Figure()
    for kind, ys in acc.items():
        fig.add_trace(go.Scatter(x=xs, y=list(ys), mode="lines+markers", name=kind))
    fig.add_trace(go.Scatter(x=xs, y=[maj] * len(xs), mode="lines", name="majority class",
                             line={"dash": "dash", "color": "grey"}))
    what = "cross-mention pairs" if cross else "pairs"
    fig.update_layout(title=f"IsSameObject probes ({report['task']}), {what} of test texts; class balance "
                      f"{balance:.2f}", xaxis_title="layer", yaxis_title="test accuracy", template="plotly_white")
    return fig


def binding_rank_sweep(sweep: Mapping) -> go.Figure:
    """Accuracy of the low-rank probe against its rank r, with the full probe and full − 2 points.

    ``sweep`` is ``report["rank_sweep"]`` (``layer``, ``full``, ``accuracy`` keyed by rank: test; with
    ``val_accuracy`` and ``val_full`` the validation curve the rank is chosen on is drawn too).
    """
    ranks = [int(r) for r in sweep["accuracy"]]
    full = sweep["full"]
    traces = [go.Scatter(x=ranks, y=list(sweep["accuracy"].values()), mode="lines+markers", name="lowrank, test"),
              go.Scatter(x=ranks, y=[full] * len(ranks), mode="lines", name="full, test", line={"dash": "dash"})]
    if "val_accuracy" in sweep:
        vf = sweep["val_full"]
        traces += [go.Scatter(x=ranks, y=list(sweep["val_accuracy"].values()), mode="lines+markers",
                              name="lowrank, validation"),
                   go.Scatter(x=ranks, y=[vf - 0.02] * len(ranks), mode="lines",
                              name="full − 2 points, validation (the choice)", line={"dash": "dot"})]
    else:
        traces.append(go.Scatter(x=ranks, y=[full - 0.02] * len(ranks), mode="lines", name="full − 2 points",
                                 line={"dash": "dot"}))
    fig = go.Figure(traces)
    fig.update_layout(title=f"Rank sweep at layer {sweep['layer']}", xaxis_title="rank r", xaxis_type="log",
                      yaxis_title="accuracy", template="plotly_white")
    return fig


# --- harmfulness ---

def harmfulness_cosine(report: Mapping) -> go.Figure:
    """cos(harmfulness, refusal direction) per layer, the same-position control and the permutation baseline.

    ``report`` is the harmfulness experiment's report (``cosine``, ``cosine_same_position``,
    ``permutation_abs_cos_mean``, ``permutation_abs_cos_p95``).
    """
    return layer_lines({"cos(harmfulness, refusal)": report["cosine"],
                        "same position (last token)": report["cosine_same_position"],
                        "|cos| permutation mean": report["permutation_abs_cos_mean"],
                        "|cos| permutation p95": report["permutation_abs_cos_p95"]},
                       title="Harmfulness vs refusal direction, per layer", yaxis="cosine")


def guard_roc(families: Mapping[str, Mapping]) -> go.Figure:
    """Latent Guard ROC curve per prompt family.

    ``families`` maps a family to ``{"scores": [...], "n": ..., "n_harmful": ..., "guard_auroc": ...}``, the
    harmful prompts first (the experiment's ``guard_eval``).
    """
    from sklearn.metrics import roc_curve

    fig = go.Figure()
    for fam, r in families.items():
        y = [1] * r["n_harmful"] + [0] * (r["n"] - r["n_harmful"])
        fpr, tpr, _ = roc_curve(y, r["scores"])
        fig.add_trace(go.Scatter(x=fpr, y=tpr, mode="lines", name=f"{fam} (AUROC {r['guard_auroc']:.3f})"))
    fig.update_layout(title="Latent Guard ROC per prompt family", xaxis_title="false positive rate",
                      yaxis_title="true positive rate", template="plotly_white")
    return fig


def reply_inversion(inversion: Mapping[str, Mapping]) -> dict[str, go.Figure]:
    """One figure per steered layer: 'Certainly' and refusal rates on harmless prompts against alpha.

    ``inversion`` is ``report["inversion"]`` (layer → ``alphas`` and ``results["{direction}@{alpha}"]``).
    """
    figs = {}
    for layer, inv in inversion.items():
        fig = go.Figure()
        for name in ("harmfulness", "refusal"):
            for kind in ("certainly", "refusal"):
                ys = [inv["results"][f"{name}@{a}"]["harmless"][kind] for a in inv["alphas"]]
                fig.add_trace(go.Scatter(x=inv["alphas"], y=ys, mode="lines+markers",
                                         name=f"{name} direction: '{kind}' on harmless"))
        fig.update_layout(title=f"Reply inversion at layer {layer}", xaxis_title="alpha (x residual norm)",
                          yaxis_title="fraction of answers", template="plotly_white")
        figs[f"inversion_layer_{layer}"] = fig
    return figs


def reply_inversion_protocol(inversion: Mapping) -> dict[str, go.Figure]:
    """Reply inversion under the validation/test protocol: the validation sweep (harmless 'No' → 'Certainly'
    under +α·v_harm per layer) and the test rates of each edit at the chosen cell; nothing when the gate failed.

    ``inversion`` is ``report["inversion"]`` of the harmfulness experiment.
    """
    if not inversion or not inversion.get("doable"):
        return {}
    sweep = inversion["validation_sweep"]
    val = go.Figure()
    for a in inversion["candidates"]["alphas"]:
        layers = inversion["candidates"]["layers"]
        val.add_trace(go.Scatter(x=layers, y=[sweep[f"{layer}@{a:g}"]["harmless_to_certainly"] for layer in layers],
                                 mode="lines+markers", name=f"+{a:g}·v_harm"))
    val.update_layout(title="Reply inversion, validation: harmless 'No' → 'Certainly'", xaxis_title="layer",
                      yaxis_title="flip rate", template="plotly_white")
    test = inversion["test"]
    names = [k for k in test if k != "baseline"]
    bars = go.Figure([go.Bar(x=names, y=[test[k]["harmless_to_certainly"] for k in names],
                             name="harmless → 'Certainly'"),
                      go.Bar(x=names, y=[test[k]["harmful_to_no"] for k in names], name="harmful → 'No'"),
                      go.Bar(x=names, y=[test[k]["harmless"]["refusal"] for k in names], name="refusals on harmless")])
    bars.update_layout(title=f"Reply inversion, test (layer {inversion['chosen']['layer']}, "
                             f"α {inversion['chosen']['alpha']:g})", yaxis_title="fraction", barmode="group",
                       template="plotly_white")
    return {"inversion_validation": val, "inversion_test": bars}


# --- separation ---

def separation_per_layer(rows: Sequence[Mapping], where: str = "resid_post, last token") -> dict[str, go.Figure]:
    """Cross-validated probe accuracy and d' per layer (``report["per_layer"]`` of the separation experiment)."""
    return {"cv_accuracy": layer_lines({"cv accuracy": [r["cv_accuracy"] for r in rows]},
                                       title=f"Probe accuracy per layer ({where})", yaxis="accuracy"),
            "dprime": layer_lines({"d'": [r["dprime"] for r in rows]}, title="d' along the difference of means",
                                  yaxis="d'")}


# --- contrastive steering ---

def steering_sweep(rows: Sequence[Mapping], title: str = "Steering strength sweep") -> go.Figure:
    """Behaviour and cost per steering strength (``report["test_sweep"]`` of the steering experiment): reply
    rates and the answer margin on the left, the prose cross-entropy increase on the right."""
    from plotly.subplots import make_subplots

    xs = [r["strength"] for r in rows]
    fig = make_subplots(rows=1, cols=2, subplot_titles=("behaviour", "cost"), specs=[[{"secondary_y": True}, {}]])
    for key, name in (("positive_rate", "replies opening with the positive answer"),
                      ("negative_rate", "replies opening with the negative answer"),
                      ("prefers_positive", "pairs where p(positive) > p(negative)")):
        if all(key in r for r in rows):
            fig.add_trace(go.Scatter(x=xs, y=[r[key] for r in rows], mode="lines+markers", name=name), 1, 1)
    fig.add_trace(go.Scatter(x=xs, y=[r["margin"] for r in rows], mode="lines+markers", line={"dash": "dot"},
                             name="answer margin (nats, right axis)"), 1, 1, secondary_y=True)
    fig.add_trace(go.Scatter(x=xs, y=[r["ce_increase"] for r in rows], mode="lines+markers",
                             name="prose CE increase (nats/token)"), 1, 2)
    fig.update_xaxes(title_text="strength (× mean difference)")
    fig.update_yaxes(title_text="fraction", range=[-0.05, 1.05], row=1, col=1, secondary_y=False)
    fig.update_yaxes(title_text="log p(pos) − log p(neg)", row=1, col=1, secondary_y=True)
    fig.update_yaxes(title_text="Δ cross-entropy", row=1, col=2)
    fig.update_layout(title=title, template="plotly_white", legend={"orientation": "h", "y": -0.25})
    return fig


def steering_layers(grid: Sequence[Mapping]) -> go.Figure:
    """Validation margin gain against strength, one line per candidate layer (``report["validation_grid"]``);
    hover shows the cross-entropy cost."""
    fig = go.Figure()
    for layer in sorted({r["layer"] for r in grid}):
        pts = sorted((r for r in grid if r["layer"] == layer), key=lambda r: r["strength"])
        fig.add_trace(go.Scatter(x=[r["strength"] for r in pts], y=[r.get("margin_gain", r["margin"]) for r in pts],
                                 mode="lines+markers", name=f"layer {layer}",
                                 customdata=[r["ce_increase"] for r in pts],
                                 hovertemplate="strength %{x}<br>margin gain %{y:.2f}<br>CE +%{customdata:.3f}"))
    fig.update_layout(title="Validation: answer-margin gain per layer and strength", xaxis_title="strength",
                      yaxis_title="margin gain (nats)", template="plotly_white")
    return fig


# --- logit lens ---

def lens_heatmap(lens, tokenizer, prompt: int = 0, value: str = "prob", view: str | None = None) -> go.Figure:
    """Logit-lens heatmap for one prompt of a ``LensResult`` (``interp.lens.logit_lens``).

    ``view="positions"``: layers × the prompt's positions, each cell labelled with that layer's top
    token; ``view="top_k"``: layers × the top-k tokens at the last analysed position. The default is
    positions when the lens covers several positions. ``value`` (positions view; the top-k view always
    shows probabilities): ``prob`` (top-token probability), ``target_prob``, ``target_rank`` (log10
    scale) or ``kl`` (KL to the final layer, nats).

    Example:
        >>> from interp.testing import tiny_model
        >>> from interp.lens import logit_lens
        >>> m = tiny_model()
        >>> lens_heatmap(logit_lens(m, ["hi there"], chat=False, progress=False), m.tokenizer).data[0].type
        'heatmap'
    """
    from .errors import InterpError

    if not 0 <= prompt < len(lens.prompts):
        raise InterpError(f"prompt {prompt} out of range: the lens has {len(lens.prompts)} prompts")
    values = {"prob": lens.top_probs[..., 0], "target_prob": lens.target_prob, "kl": lens.kl_to_final,
              "target_rank": lens.target_rank.float().add(1).log10()}
    if value not in values:
        raise InterpError(f"value must be one of {', '.join(values)}, got {value!r}")
    cols = [int(j) for j in lens.mask[prompt].nonzero()[:, 0]]
    view = view or ("positions" if len(cols) > 1 else "top_k")
    ylabels = [f"L{x}" for x in lens.layers]
    if view == "positions":
        toks = lens.input_tokens[prompt]
        xlabels = [f"{j}:{toks[j]!r}" if lens.positions == "all" else f"last:{toks[-1]!r}" for j in cols]
        z = values[value][:, prompt, cols].tolist()
        text = [[tokenizer.decode([int(t)]) for t in row] for row in lens.top_ids[:, prompt, cols, 0]]
        title = f"Logit lens: top token per layer and position ({value})"
    elif view == "top_k":
        j = cols[-1]
        k = lens.top_ids.shape[-1]
        xlabels = [f"#{r + 1}" for r in range(k)]
        z = lens.top_probs[:, prompt, j].tolist()
        text = [[tokenizer.decode([int(t)]) for t in row] for row in lens.top_ids[:, prompt, j]]
        title = "Logit lens: top tokens per layer (probability)"
    else:
        raise InterpError(f"view must be 'positions' or 'top_k', got {view!r}")
    fig = go.Figure(go.Heatmap(z=z, x=xlabels, y=ylabels, text=text, texttemplate="%{text}",
                               colorscale="Blues" if value != "kl" else "Reds",
                               colorbar={"title": "log10(rank+1)" if value == "target_rank" else value}))
    fig.update_layout(title=title, xaxis_title="position" if view == "positions" else "rank",
                      yaxis_title="layer", template="plotly_white")
    return fig
