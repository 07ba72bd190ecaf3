"""``interp binding``: IsSameObject pairwise probes on a language model's tokens (Li et al.).

Walks the path once: annotated texts → tokens (character spans mapped with
the tokenizer's offsets) → ``resid_post`` at every token of chosen layers →
balanced same-entity / different-entity pairs, split by text → linear,
diagonal, full and low-rank probes plus cosine/dot baselines per layer →
rank sweep at the best layer → ablation of the learned binding subspace vs a
random subspace of the same dimension (probe accuracy and the model's loss).

Example:
    interp binding smollm2-135m-instruct --out runs/binding --layers 0,6,12
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

PROBE_KINDS = ("linear", "diagonal", "full", "lowrank", "cosine", "dot")
RANKS = (1, 2, 4, 8, 16, 32, 64)


def add_parser(sub) -> None:
    p = sub.add_parser("binding", help="IsSameObject pairwise probes: do two tokens belong to the same entity",
                       description="Fit linear, diagonal, full and low-rank pairwise probes (and cosine/dot "
                       "baselines) on resid_post per layer for same-entity token pairs from annotated texts "
                       "(data/coref_texts.jsonl), held out by text; sweep the low-rank probe's rank; ablate the "
                       "learned subspace and a random one. Writes report.json and report.html.")
    p.add_argument("model", help="packaged model name, .gguf file, local folder or hub id")
    p.add_argument("--out", required=True, help="output folder for report.json and report.html")
    p.add_argument("--layers", default="all", help="'all', 'every:N' (every Nth layer) or comma-separated indices")
    p.add_argument("--task", default="entity", choices=["entity", "word"],
                   help="entity: same coreference entity; word: sub-word tokens of one word (default entity)")
    p.add_argument("--texts", default=None, help="annotated JSONL (default data/coref_texts.jsonl)")
    p.add_argument("--rank", type=int, default=16, help="rank of the per-layer low-rank probe (default 16)")
    p.add_argument("--ranks", default=",".join(map(str, RANKS)), help="ranks for the sweep at the best layer")
    p.add_argument("--epochs", type=int, default=30, help="training epochs per probe (default 30)")
    p.add_argument("--per-anchor", type=int, default=3, help="positive (and negative) partners per anchor token")
    p.add_argument("--test-fraction", type=float, default=0.25, help="fraction of texts held out (default 0.25)")
    p.add_argument("--no-ablation", action="store_true", help="skip the subspace ablation")
    p.add_argument("--seed", type=int, default=0, help="seed for pair sampling, the split and probe init")
    p.set_defaults(func=run)


def parse_layers(spec: str, n_layers: int) -> list[int]:
    """'all', 'every:3' or '0,5,9' → layer indices.

    Example:
        >>> parse_layers("every:3", 8)
        [0, 3, 6]
    """
    from ..errors import InterpError

    if spec == "all":
        return list(range(n_layers))
    if spec.startswith("every:"):
        return list(range(0, n_layers, int(spec.split(":")[1])))
    layers = [int(x) for x in spec.split(",") if x.strip()]
    if not layers or any(not 0 <= layer < n_layers for layer in layers):
        raise InterpError(f"layers must be 'all', 'every:N' or indices in 0..{n_layers - 1}, got {spec!r}")
    return sorted(set(layers))


# ---------------------------------------------------------------- the path
def tokenize_texts(model, records: Sequence[dict]) -> dict:
    """Token ids, entity/mention/word groups per text, checked against ``model.encode(chat=False)``."""
    from ..data.binding import entity_groups, token_offsets, word_groups
    from ..errors import InterpError

    texts = [r["text"] for r in records]
    enc = model.encode(texts, chat=False)
    out = {"texts": texts, "ids": [], "entity": [], "mention": [], "word": []}
    for i, r in enumerate(records):
        ids, offsets = token_offsets(model.tokenizer, r["text"])
        if ids != enc.ids[i]:
            raise InterpError(f"text {i}: tokenizing with offsets gave different tokens than model.encode; the "
                              f"tokenizer must be a fast tokenizer that adds the same special tokens")
        g, m = entity_groups(offsets, r["entities"])
        out["ids"].append(ids)
        out["entity"].append(g)
        out["mention"].append(m)
        out["word"].append(word_groups(r["text"], offsets))
    out["lengths"] = [len(x) for x in out["ids"]]
    return out


def capture_tokens(model, texts: Sequence[str], layers: Sequence[int], batch_size: int = 8,
                   interventions: dict | None = None) -> dict[int, torch.Tensor]:
    """resid_post at every token: {layer: [n_tokens, d]}, rows text by text (optionally under interventions)."""
    from contextlib import nullcontext

    ctx = model.intervene(interventions) if interventions else nullcontext()
    with ctx:
        acts = model.capture(list(texts), [f"resid_post.{layer}" for layer in layers], positions="all", chat=False,
                             batch_size=batch_size, progress=True)
    return {layer: acts.tokens(f"resid_post.{layer}") for layer in layers}


def token_losses(model, tok: dict, interventions: dict | None = None, batch_size: int = 8) -> dict[str, float]:
    """Mean next-token loss (nats) on all tokens and on re-mention tokens (2nd+ mention of an entity)."""
    from contextlib import nullcontext

    ctx = model.intervene(interventions) if interventions else nullcontext()
    all_nll, mention_nll = [], []
    with ctx, torch.no_grad():
        for s in range(0, len(tok["ids"]), batch_size):
            rows = list(range(s, min(s + batch_size, len(tok["ids"]))))
            batch = model.pad([tok["ids"][i] for i in rows])
            logp = torch.log_softmax(model.run(batch).double(), -1)
            width = batch["input_ids"].shape[1]
            for j, i in enumerate(rows):
                n = tok["lengths"][i]
                cols = torch.arange(width - n, width)
                nll = -logp[j, cols[:-1]].gather(-1, batch["input_ids"][j, cols[1:], None].to(logp.device))[:, 0]
                all_nll.append(nll.cpu())
                remention = torch.from_numpy(tok["mention"][i][1:] >= 1)
                mention_nll.append(nll.cpu()[remention])
    return {"all": float(torch.cat(all_nll).mean()), "remention": float(torch.cat(mention_nll).mean())}


def binding_experiment(model, records: Sequence[dict], layers: Sequence[int], task: str = "entity", rank: int = 16,
                       ranks: Sequence[int] = RANKS, epochs: int = 30, per_anchor: int = 3,
                       test_fraction: float = 0.25, ablation: bool = True, seed: int = 0,
                       kinds: Sequence[str] = PROBE_KINDS) -> dict:
    """Run the whole analysis and return the report dict (see ``interp binding --help``)."""
    from ..analyzers.binding import PairwiseProbe, class_balance, evaluate_kinds, majority_baseline, min_rank_within
    from ..data.binding import sample_pairs, split_units
    from ..errors import InterpError

    t0 = time.time()
    tok = tokenize_texts(model, records)
    # position 0 is skipped: its activations are attention-sink outliers, not a token's meaning
    pairs = sample_pairs(tok[task], per_anchor=per_anchor, seed=seed, skip_positions=[0])
    train_units, test_units = split_units(len(records), test_fraction, seed)
    train, test = pairs.subset(train_units), pairs.subset(test_units)
    if len(train) == 0 or len(test) == 0 or len(set(test.labels.tolist())) < 2:
        raise InterpError("the split left no usable train or test pairs; use more texts")
    Xs = capture_tokens(model, tok["texts"], layers)
    probe_kw = dict(epochs=epochs, seed=seed)
    acc: dict[str, list[float]] = {k: [] for k in kinds}
    for layer in tqdm(layers, desc="probes per layer", unit="layer"):
        res = evaluate_kinds(Xs[layer], train.pairs, train.labels, Xs[layer], test.pairs, test.labels, kinds=kinds,
                             rank=rank, **probe_kw)
        for k in kinds:
            acc[k].append(res[k])
    report = {
        "model": model.describe(), "task": task, "layers": list(layers), "site": "resid_post",
        "n_texts": len(records), "n_train_texts": len(train_units), "n_test_texts": len(test_units),
        "n_train_pairs": len(train), "n_test_pairs": len(test), "per_anchor": per_anchor, "epochs": epochs,
        "lowrank_rank": rank, "accuracy": acc,
        "majority_baseline": majority_baseline(test.labels), "class_balance": class_balance(test.labels),
        "train_class_balance": class_balance(train.labels),
    }
    quad = [k for k in ("full", "diagonal", "lowrank") if k in kinds]
    if quad and "linear" in kinds:
        best_q = max(quad, key=lambda k: max(acc[k]))
        i = int(np.argmax(acc[best_q]))
        report["best"] = {"kind": best_q, "layer": layers[i], "accuracy": acc[best_q][i],
                          "linear_at_that_layer": acc["linear"][i],
                          "quadratic_minus_linear": acc[best_q][i] - acc["linear"][i]}
    if "full" in kinds:
        i = int(np.argmax(acc["full"]))
        L = layers[i]
        X = Xs[L]
        sweep = {}
        for r in tqdm([r for r in ranks if r <= X.shape[1]], desc=f"rank sweep at layer {L}", unit="rank"):
            sweep[r] = PairwiseProbe("lowrank", rank=r, **probe_kw).fit(X, train.pairs, train.labels).score(
                X, test.pairs, test.labels)
        report["rank_sweep"] = {"layer": L, "full": acc["full"][i], "accuracy": {str(r): a for r, a in sweep.items()}}
        report["min_rank_within_2pts"] = min_rank_within(sweep, acc["full"][i], 0.02)
        if ablation and sweep:
            r_abl = report["min_rank_within_2pts"] or max(sweep, key=sweep.get)
            later = [x for x in layers if x > L]
            report["ablation"] = subspace_ablation(model, tok, Xs, L, later[0] if later else None, r_abl, train, test,
                                                   probe_kw, seed)
    report["seconds"] = round(time.time() - t0, 1)
    return report


def subspace_ablation(model, tok: dict, Xs: dict, layer: int, later: int | None, rank: int, train, test,
                      probe_kw: dict, seed: int = 0, n_random: int = 3) -> dict:
    """Project the binding subspace (span of a rank-``rank`` probe's A and B rows) out of resid_post.``layer``.

    Compared with projecting out random subspaces of the same dimension:
    the fitted probe's accuracy on ablated activations, a probe retrained at
    the next analysed layer on activations captured under the ablation, and
    the model's loss on the texts (all tokens, and re-mention tokens).
    """
    from ..analyzers.binding import PairwiseProbe
    from ..interventions import Ablate

    X = Xs[layer]
    probe = PairwiseProbe("lowrank", rank=rank, **probe_kw).fit(X, train.pairs, train.labels)
    Q = probe.subspace()
    k, d = Q.shape
    gen = torch.Generator().manual_seed(seed + 1)
    randoms = [torch.linalg.qr(torch.randn(d, k, generator=gen, dtype=torch.float64)).Q.T.float()
               for _ in range(n_random)]
    site = f"resid_post.{layer}"
    out = {"layer": layer, "probe_rank": rank, "dims_removed": k, "later_layer": later,
           "probe_accuracy": {}, "later_probe_accuracy": {}, "loss": {}}

    def project(X, B):
        return X - (X @ B.T) @ B

    out["probe_accuracy"]["none"] = probe.score(X, test.pairs, test.labels)
    out["probe_accuracy"]["binding"] = probe.score(project(X, Q), test.pairs, test.labels)
    out["probe_accuracy"]["random"] = float(np.mean([probe.score(project(X, R), test.pairs, test.labels)
                                                     for R in randoms]))
    # a fresh probe on the ablated layer itself: is the relation still decodable from what is left?
    out["retrained_probe_accuracy"] = {
        "binding": PairwiseProbe("lowrank", rank=rank, **probe_kw).fit(project(X, Q), train.pairs, train.labels)
        .score(project(X, Q), test.pairs, test.labels)}
    conditions = {"none": None, "binding": Q, "random": randoms[0]}
    if later is not None:
        for name, B in conditions.items():
            Xl = Xs[later] if B is None else capture_tokens(model, tok["texts"], [later], interventions={
                site: Ablate(B)})[later]
            out["later_probe_accuracy"][name] = PairwiseProbe("lowrank", rank=rank, **probe_kw).fit(
                Xl, train.pairs, train.labels).score(Xl, test.pairs, test.labels)
    out["loss"]["none"] = token_losses(model, tok)
    out["loss"]["binding"] = token_losses(model, tok, {site: Ablate(Q)})
    rand = [token_losses(model, tok, {site: Ablate(R)}) for R in randoms]
    out["loss"]["random"] = {key: float(np.mean([r[key] for r in rand])) for key in rand[0]}
    out["n_random"] = n_random
    return out


# ---------------------------------------------------------------- report
def binding_figures(report: dict) -> list:
    """Accuracy per layer (with the majority baseline) and the rank sweep."""
    import plotly.graph_objects as go

    xs = report["layers"]
    fig = go.Figure()
    for kind, ys in report["accuracy"].items():
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", name=kind))
    fig.add_trace(go.Scatter(x=xs, y=[report["majority_baseline"]] * len(xs), mode="lines", name="majority class",
                             line={"dash": "dash", "color": "grey"}))
    fig.update_layout(title=f"IsSameObject probes ({report['task']}), held-out texts; class balance "
                      f"{report['class_balance']:.2f}", xaxis_title="layer", yaxis_title="test accuracy",
                      template="plotly_white")
    figs = [fig]
    if "rank_sweep" in report:
        rs = report["rank_sweep"]
        ranks = [int(r) for r in rs["accuracy"]]
        f2 = go.Figure([go.Scatter(x=ranks, y=list(rs["accuracy"].values()), mode="lines+markers", name="lowrank"),
                        go.Scatter(x=ranks, y=[rs["full"]] * len(ranks), mode="lines", name="full",
                                   line={"dash": "dash"}),
                        go.Scatter(x=ranks, y=[rs["full"] - 0.02] * len(ranks), mode="lines",
                                   name="full − 2 points", line={"dash": "dot"})])
        f2.update_layout(title=f"Rank sweep at layer {rs['layer']}", xaxis_title="rank r", xaxis_type="log",
                         yaxis_title="test accuracy", template="plotly_white")
        figs.append(f2)
    return figs


def summary_lines(report: dict) -> list[str]:
    """Plain-text table: accuracy per layer for each kind, beside the majority baseline and class balance."""
    kinds = list(report["accuracy"])
    lines = [f"task {report['task']}; test pairs {report['n_test_pairs']} from {report['n_test_texts']} held-out texts; "
             f"class balance {report['class_balance']:.3f}; majority baseline {report['majority_baseline']:.3f}",
             "layer " + " ".join(f"{k:>8}" for k in kinds)]
    for i, layer in enumerate(report["layers"]):
        lines.append(f"{layer:>5} " + " ".join(f"{report['accuracy'][k][i]:8.3f}" for k in kinds))
    if "best" in report:
        b = report["best"]
        lines.append(f"best quadratic: {b['kind']} at layer {b['layer']}: {b['accuracy']:.3f} vs linear "
                     f"{b['linear_at_that_layer']:.3f} (+{100 * b['quadratic_minus_linear']:.1f} points), majority "
                     f"{report['majority_baseline']:.3f}")
    if "rank_sweep" in report:
        rs = report["rank_sweep"]
        lines.append(f"rank sweep at layer {rs['layer']} (full {rs['full']:.3f}): " +
                     ", ".join(f"r={r}: {a:.3f}" for r, a in rs["accuracy"].items()) +
                     f"; smallest r within 2 points: {report['min_rank_within_2pts']}")
    if "ablation" in report:
        a = report["ablation"]
        lines.append(f"ablation at layer {a['layer']} ({a['dims_removed']} dims): probe acc none/binding/random "
                     f"{a['probe_accuracy']['none']:.3f}/{a['probe_accuracy']['binding']:.3f}/"
                     f"{a['probe_accuracy']['random']:.3f}; retrained on ablated "
                     f"{a['retrained_probe_accuracy']['binding']:.3f}")
        if a["later_probe_accuracy"]:
            lp = a["later_probe_accuracy"]
            lines.append(f"  probe retrained at layer {a['later_layer']}: none/binding/random "
                         f"{lp['none']:.3f}/{lp['binding']:.3f}/{lp['random']:.3f}")
        lo = a["loss"]
        lines.append("  loss (all / re-mention tokens): " + "; ".join(
            f"{k} {v['all']:.4f}/{v['remention']:.4f}" for k, v in lo.items()))
    return lines


def run(args) -> int:
    from ..data.binding import load_coref_texts
    from ..loading import load_model
    from ..plots import write_html

    model = load_model(args.model)
    layers = parse_layers(args.layers, model.n_layers)
    records = load_coref_texts(args.texts)
    ranks = [int(r) for r in args.ranks.split(",") if r.strip()]
    report = binding_experiment(model, records, layers, task=args.task, rank=args.rank, ranks=ranks,
                                epochs=args.epochs, per_anchor=args.per_anchor, test_fraction=args.test_fraction,
                                ablation=not args.no_ablation, seed=args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    lines = summary_lines(report)
    write_html(binding_figures(report), out / "report.html", title=f"IsSameObject probes: {model.name}",
               intro="<br>".join(lines))
    print("\n".join(lines))
    print(f"wrote {out}/report.json and report.html ({report['seconds']} s)")
    return 0
