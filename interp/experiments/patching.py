"""Activation patching, DAS and the subspace-patching illusion (Makelov, Lange, Nanda 2023), top to bottom.

§6 of ``shared/methods.md`` on interp's one path:

1. data: IOI clean/corrupted pairs (``interp.data.ioi``), half to train DAS
   and half to score every fraction of effect;
2. capture + intervene: clean activations (``run_with_cache``) patched into
   the corrupted run at each site × layer × position (``Patch``), the metric
   the logit difference (``interp.evaluation.logit_diff``), normalized so
   0 = corrupted and 1 = clean; the sweep picks the DAS sites as the paper's
   IOI set-up does (see ``run``);
3. fit: a 1-D DAS direction in an MLP hidden layer and in the residual stream
   at END (``ProjectionPatch`` trained on the training pairs), and the
   mean-difference direction beside each;
4. evaluate: the illusion checks on held-out pairs: the full-component patch,
   the direction, its rowspace and nullspace parts against the matrix that
   reads the site (``interp.analyzers.illusion``), and a verdict;
5. report: a ``Result`` with the sweep, both subspaces' checks, headline
   numbers beside the paper's, heatmaps and the fraction-of-effect bars.

The library pieces (``patching_sweep``, ``learn_das``, ``direction_effect``,
``check_subspace``, ``reader_matrix``, ...) live in ``._patching`` and are
importable from here.

Example:
    from interp.experiments import patching
    result = patching.run(model, patching.Config(pairs=16, das_steps=20), out="runs/patch")
    result["subspaces"]["mlp"]["fraction_of_effect"], result["verdict"]
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from .. import plots
from ..data.ioi import PatchTask, ioi_task
from ..errors import InterpError
from ..report import Headline, Result, Stopwatch, write_report
from ..sites import SITE_NAMES
from ._patching import (Metric, Pairs, check_readout, check_subspace, direction_effect,
                        learn_das, logit_diff, mean_difference_direction, patching_sweep, reader_matrix,
                        sweep_pairs)

__all__ = ["Config", "run", "check_config", "PatchTask", "ioi_task", "Pairs", "Metric", "logit_diff",
           "patching_sweep", "learn_das", "direction_effect", "mean_difference_direction", "reader_matrix",
           "check_subspace", "PAPER"]

#: What the paper reports (IOI, GPT-2 small; ``shared/methods.md`` §6), beside the same quantities here.
PAPER = {"mlp": {"full": "−8% (MLP8)", "das": "46.7% (MLP8)", "rowspace": "13.5% (MLP8)", "nullspace": "0% (MLP8)"},
         "resid": {"full": "123.6%", "das": "140.7%", "rowspace": "127.5%", "nullspace": None}}


@dataclass
class Config:
    """Settings of the patching experiment; the layer choices follow the paper's IOI set-up unless given."""

    pairs: int = 32  #: clean/corrupted IOI pairs (half train DAS, half score it); at least 4
    task_path: str | None = None  #: task JSON with names, templates and roles (None: data/ioi_task.json)
    seed: int = 0  #: seed of the names, the train/test split and the DAS start
    positions: tuple[int, ...] = (-1, -2, -3, -4, -5)  #: sweep positions, counted from the end (−1 = END)
    sites: tuple[str, ...] = ("resid_pre", "attn_out", "mlp_out")  #: sweep sites; must hold resid_pre and attn_out
    mlp_layer: int | None = None  #: layer of the MLP DAS (None: the residual DAS layer)
    resid_layer: int | None = None  #: layer of the residual DAS (None: where the END signal has half-arrived)
    readout: str | None = None  #: reader of the residual site: 'q.L:h,h', 'answers' or 'unembed' (None: top heads)
    reader_heads: int = 3  #: heads of the name-mover layer in the default read-out
    das_steps: int = 60  #: Adam steps of DAS
    das_lr: float = 1e-2  #: Adam learning rate of DAS (the direction starts at unit norm)
    faithful_share: float = 0.5  #: verdict "faithful" when the rowspace part keeps this share of the effect
    progress: bool = True  #: show progress bars


def check_config(config: Config, n_layers: int | None = None, n_heads: int | None = None) -> Config:
    """Fail on settings ``run`` would reject, before a model is loaded (sizes checked when given)."""
    c = config
    if c.pairs < 4:
        raise InterpError(f"need at least 4 prompt pairs (half to train DAS, half to test), got {c.pairs}")
    if not c.positions or any(not isinstance(p, int) or p >= 0 for p in c.positions):
        raise InterpError(f"positions count from the end and must be negative integers (-1 = last token), "
                          f"got {list(c.positions)}")
    bad = [s for s in c.sites if s not in SITE_NAMES]
    if bad:
        raise InterpError(f"unknown sweep site(s) {bad}; use names from {', '.join(SITE_NAMES)}")
    if "resid_pre" not in c.sites or "attn_out" not in c.sites:
        raise InterpError("the sweep must include resid_pre and attn_out: the DAS layers are chosen from them")
    for name, layer in (("mlp_layer", c.mlp_layer), ("resid_layer", c.resid_layer)):
        if layer is not None and (layer < 0 or (n_layers is not None and layer >= n_layers)):
            top = f"{n_layers - 1}" if n_layers else "the last layer"
            raise InterpError(f"{name} must be a layer in 0..{top}, got {layer}")
    check_readout(c.readout, n_layers, n_heads)
    if c.das_steps < 0 or c.reader_heads < 1:
        raise InterpError("das_steps must be >= 0 and reader_heads >= 1")
    return c


def run(model, config: Config | None = None, out=None, *, task: PatchTask | None = None) -> Result:
    """Sweep, then DAS in an MLP hidden layer and in the residual stream at END, with the illusion checks.

    Layer choices follow the paper's IOI set-up (a residual direction that
    carries the signal into the heads that write the answer, and the MLP of
    that same block). Unless given:

    - the reader layer N is the one whose ``attn_out`` patch at the last
      position matters most (in IOI: the name movers);
    - the residual layer is the first up to N whose ``resid_pre`` patch at
      the last position reaches half of that at N (the signal has arrived,
      and the heads that act on it come later);
    - the MLP layer is that same layer;
    - the residual read-out is the query projections of the ``reader_heads``
      heads of layer N whose own (``attn_z``) patches matter most.

    ``task`` replaces the IOI pairs the config describes. With ``out`` the
    report is written there.
    """
    cfg = check_config(config or Config(), model.n_layers, model.n_heads)
    sw = Stopwatch()

    # data: the pairs, and the split that keeps DAS's test pairs unseen
    with sw("data"):
        given = task is not None
        task = task if given else ioi_task(model, n=cfg.pairs, seed=cfg.seed, path=cfg.task_path)
        n = len(task.clean)
        if n < 4:
            raise InterpError(f"need at least 4 prompt pairs (half to train DAS, half to test), got {n}")
        order = list(range(n))
        random.Random(cfg.seed).shuffle(order)
        train, test = Pairs(model, task.subset(order[: n // 2])), Pairs(model, task.subset(order[n // 2:]))

    # capture + intervene: the sweep, and the DAS sites it points to
    with sw("sweep"):
        pairs = Pairs(model, task)
        sweep = sweep_pairs(pairs, cfg.sites, positions=cfg.positions, progress=cfg.progress)
        if task.roles:
            sweep["roles"] = {str(p): r for r, p in task.roles.items() if p in sweep["positions"]}
        reader_layer, resid_layer, mlp_layer = _choose_layers(sweep, model.n_layers, cfg)
        readout, heads = cfg.readout, None
        if readout is None:
            heads = sweep_pairs(pairs, ("attn_z",), layers=[reader_layer], progress=False)["effects"]["attn_z"][0]
            top = sorted(range(model.n_heads), key=lambda h: -heads[h])[:cfg.reader_heads]
            readout = f"q.{reader_layer}:{','.join(map(str, sorted(top)))}"

    # fit (DAS on training pairs) and evaluate (checks on held-out pairs), per subspace
    subspaces = {}
    for key, site, reader in (("mlp", f"mlp_act.{mlp_layer}", None), ("resid", f"resid_pre.{resid_layer}", readout)):
        with sw(f"das {key}"):
            v = learn_das(model, train, site, -1, steps=cfg.das_steps, lr=cfg.das_lr, seed=cfg.seed,
                          progress=cfg.progress)
            md = mean_difference_direction(model, train, site)
        with sw(f"checks {key}"):
            checks = check_subspace(model, test, site, v, -1, reader, faithful_share=cfg.faithful_share)
            subspaces[key] = {"site": site, "reader": "down projection" if reader is None else reader,
                              **checks.to_dict(),
                              "das_effect_train": direction_effect(model, train, site, v),
                              "mean_difference_effect": direction_effect(model, test, site, md),
                              "cos_das_mean_difference": float(torch.nn.functional.cosine_similarity(
                                  v.double(), md.double().to(v.device), dim=0))}

    # report
    report = {"model": model.describe(), "n_pairs": n, "sweep": sweep, "subspaces": subspaces,
              "fraction_of_effect": subspaces["mlp"]["fraction_of_effect"], "verdict": subspaces["mlp"]["verdict"]}
    if heads is not None:
        report["reader_heads"] = {"layer": reader_layer, "attn_z_effects": heads}
    protocol = {"task": "given to run()" if given else (cfg.task_path or "data/ioi_task.json"),
                "pairs": n, "train": f"{n // 2} pairs (shuffled with seed {cfg.seed}): DAS and mean difference fit",
                "test": f"{n - n // 2} other pairs: every fraction of effect and the verdicts",
                "sweep": "all pairs; it chooses the DAS layers and the default read-out"}
    result = Result("patching", report, figures=_figures(report), headlines=_headlines(report, n - n // 2),
                    conclusion=" | ".join(f"{r['site']}: {r['verdict']}" for r in subspaces.values()),
                    config=cfg, timing=sw.seconds, title=f"Patching and illusion checks: {model.name}",
                    protocol=protocol)
    if out is not None:
        write_report(result, out, model=model)
    return result


def _choose_layers(sweep: dict, n_layers: int, cfg: Config) -> tuple[int, int, int]:
    """(reader layer, residual DAS layer, MLP DAS layer) from the END column of the sweep (see ``run``)."""
    last = sweep["positions"].index(-1) if -1 in sweep["positions"] else 0
    resid_end = [row[last] for row in sweep["effects"]["resid_pre"]]
    attn_end = [row[last] for row in sweep["effects"]["attn_out"]]
    reader_layer = max(range(1, n_layers), key=lambda i: attn_end[i])
    resid_layer = cfg.resid_layer
    if resid_layer is None:
        at_reader = resid_end[reader_layer]
        resid_layer = next((i for i in range(1, reader_layer) if at_reader > 0 and resid_end[i] >= 0.5 * at_reader),
                           reader_layer)
    mlp_layer = resid_layer if cfg.mlp_layer is None else cfg.mlp_layer
    if cfg.readout is None and reader_layer < resid_layer:  # the residual site after it: the strongest later layer
        reader_layer = max(range(resid_layer, n_layers), key=lambda i: attn_end[i])
    return reader_layer, resid_layer, mlp_layer


def _figures(report: dict) -> dict:
    figs = dict(plots.patching_heatmaps(report["sweep"]))
    figs["fraction of effect"] = plots.illusion_fractions(report["subspaces"])
    return figs


def _headlines(report: dict, n_test: int) -> list[Headline]:
    split = f"held-out pairs (n={n_test})"
    out = []
    for key, r in report["subspaces"].items():
        f = r["fraction_of_effect"]
        where = f"{r['site']} (read by {r['reader']})"
        for part, label in (("das", "DAS direction"), ("rowspace", "its rowspace part"),
                            ("nullspace", "its nullspace part"), ("full", "full component")):
            out.append(Headline(f"{where}: {label}, fraction of effect", f[part], split, paper=PAPER[key][part]))
        out.append(Headline(f"{where}: DAS direction on its training pairs", r["das_effect_train"],
                            f"training pairs (n={report['n_pairs'] - n_test})"))
        out.append(Headline(f"{where}: verdict", r["verdict"].split(":")[0], split,
                            paper="illusory" if key == "mlp" else "faithful", note=r["verdict"]))
    return out
