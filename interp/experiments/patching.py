"""Activation patching, DAS and the subspace-patching illusion (Makelov, Lange, Nanda 2023), top to bottom.

§6 of ``shared/methods.md`` on interp's one path, under the protocol of
``interp.protocol`` (choose on validation, report on test, once):

1. data: IOI clean/corrupted pairs (``interp.data.ioi``) split three ways so
   that no template and no name is in two splits (``ioi_splits``; the
   official code keeps its DAS train and test distributions apart the same
   way); a task given to ``run`` is split by pair;
2. capture + intervene (validation pairs): clean activations
   (``run_with_cache``) patched into the corrupted run at each site × layer ×
   position (``Patch``), the metric the logit difference
   (``interp.evaluation.logit_diff``), normalized so 0 = corrupted and 1 =
   clean; this sweep alone chooses the residual layer, the MLP site and the
   reader heads (see ``run``);
3. fit (training pairs): a 1-D DAS direction in an MLP hidden layer and in
   the residual stream at END (``ProjectionPatch`` trained on the training
   pairs), and the mean-difference direction beside each;
4. evaluate (test pairs, read once): the full-component patch, the
   direction, its rowspace and nullspace parts (each along its unit vector,
   as the paper) against the matrix that reads the site
   (``interp.analyzers.illusion``), random unit directions as the control,
   each as interp's normalized effect and as the paper's FLDD, and a verdict;
5. report: a ``Result`` with the protocol block, the sweep, both subspaces'
   checks, headline numbers (each naming its split) beside the paper's,
   heatmaps and the fraction-of-effect bars. ``Config.seeds`` repeats it per
   seed and reports mean ± spread.

The library pieces (``patching_sweep``, ``learn_das``, ``direction_effect``,
``check_subspace``, ``reader_matrix``, ...) live in ``._patching`` and are
importable from here.

Example:
    from interp.experiments import patching
    result = patching.run(model, patching.Config(pairs=16, das_steps=20), out="runs/patch")
    result["subspaces"]["mlp"]["fraction_of_effect"], result["verdict"], result["protocol"]
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .. import plots
from ..data.ioi import PatchTask, ioi_splits, ioi_task
from ..errors import InterpError
from ..protocol import protocol_block, seed_sweep, split_groups
from ..report import Headline, Result, Stopwatch, write_report
from ..sites import SITE_NAMES
from ._patching import (Metric, Pairs, check_readout, check_subspace, direction_effect,
                        learn_das, logit_diff, mean_difference_direction, patching_sweep, reader_matrix,
                        sweep_pairs)

__all__ = ["Config", "run", "check_config", "PatchTask", "ioi_task", "ioi_splits", "Pairs", "Metric", "logit_diff",
           "patching_sweep", "learn_das", "direction_effect", "mean_difference_direction", "reader_matrix",
           "check_subspace", "PAPER"]

#: What the paper reports (IOI, GPT-2 small; ``shared/methods.md`` §6), as FLDD (fractional logit-difference
#: decrease, %), the scale of interp's ``fldd`` numbers, not of its 0→1 fraction of effect.
PAPER = {"mlp": {"full": "−8% (MLP8)", "das": "46.7% (MLP8)", "rowspace": "13.5% (MLP8)", "nullspace": "0% (MLP8)"},
         "resid": {"full": "123.6%", "das": "140.7%", "rowspace": "127.5%", "nullspace": None}}
SPLIT_BY = ("template", "pair")


@dataclass
class Config:
    """Settings of the patching experiment; the layer choices follow the paper's IOI set-up unless given."""

    pairs: int = 32  #: clean/corrupted IOI pairs over all three splits (fractions of them each); at least 4
    task_path: str | None = None  #: task JSON with names, templates and roles (None: data/ioi_task.json)
    seed: int = 0  #: seed of the split, the names and the DAS start
    seeds: Sequence[int] | None = None  #: run once per seed and report mean ± spread of the headlines
    split_by: str = "template"  #: 'template': templates and names disjoint across splits (the official code); 'pair'
    fractions: tuple[float, float, float] = (0.5, 0.25, 0.25)  #: train (DAS), validation (choices), test (numbers)
    positions: tuple[int, ...] = (-1, -2, -3, -4, -5)  #: sweep positions, counted from the end (−1 = END)
    sites: tuple[str, ...] = ("resid_pre", "attn_out", "mlp_out")  #: sweep sites; must hold resid_pre and attn_out
    mlp_layer: int | None = None  #: layer of the MLP DAS (None: the residual DAS layer)
    resid_layer: int | None = None  #: layer of the residual DAS (None: where the END signal has half-arrived)
    readout: str | None = None  #: reader of the residual site: 'q.L:h,h', 'answers' or 'unembed' (None: top heads)
    reader_heads: int = 3  #: heads of the name-mover layer in the default read-out
    das_steps: int = 60  #: Adam steps of DAS
    das_lr: float = 1e-2  #: Adam learning rate of DAS (the direction starts at unit norm)
    random_directions: int = 3  #: random unit directions patched on the test pairs, the control DAS must beat
    faithful_share: float = 0.5  #: verdict "faithful" when the rowspace part keeps this share of the effect
    progress: bool = True  #: show progress bars


def check_config(config: Config, n_layers: int | None = None, n_heads: int | None = None) -> Config:
    """Fail on settings ``run`` would reject, before a model is loaded (sizes checked when given)."""
    c = config
    if c.pairs < 4:
        raise InterpError(f"need at least 4 prompt pairs (train DAS, validate the choices, test), got {c.pairs}")
    if c.split_by not in SPLIT_BY:
        raise InterpError(f"split_by must be one of {SPLIT_BY}, got {c.split_by!r}")
    if len(c.fractions) != 3 or any(f <= 0 for f in c.fractions) or abs(sum(c.fractions) - 1) > 1e-6:
        raise InterpError(f"fractions must be three positive numbers summing to 1 (train, val, test), "
                          f"got {c.fractions}")
    if c.seeds is not None and (not list(c.seeds) or len(set(c.seeds)) != len(list(c.seeds))):
        raise InterpError(f"seeds must be distinct integers, got {c.seeds}")
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
    if c.das_steps < 0 or c.reader_heads < 1 or c.random_directions < 0:
        raise InterpError("das_steps and random_directions must be >= 0 and reader_heads >= 1")
    return c


def run(model, config: Config | None = None, out=None, *, task: PatchTask | None = None) -> Result:
    """Sweep on validation, DAS on train, the illusion checks on test, for an MLP hidden layer and the residual stream.

    Layer choices follow the paper's IOI set-up (a residual direction that
    carries the signal into the heads that write the answer, and the MLP of
    that same block), made from a sweep over the VALIDATION pairs only. Unless given:

    - the reader layer N is the one whose ``attn_out`` patch at the last
      position matters most (in IOI: the name movers);
    - the residual layer is the first up to N whose ``resid_pre`` patch at
      the last position reaches half of that at N (the signal has arrived,
      and the heads that act on it come later);
    - the MLP layer is that same layer;
    - the residual read-out is the query projections of the ``reader_heads``
      heads of layer N whose own (``attn_z``) patches matter most.

    ``task`` replaces the IOI pairs the config describes (split by pair). With
    ``out`` the report is written there; with ``config.seeds`` the whole run
    repeats per seed (each seed's report under ``out/seed_<s>``).
    """
    cfg = check_config(config or Config(), model.n_layers, model.n_heads)
    if cfg.seeds is not None:
        return seed_sweep(lambda m, c, o: run(m, c, o, task=task), model, cfg, out,
                          varies="split, names and DAS start", extra=lambda runs: {
                              "verdicts": {s: {k: v["verdict"].split(":")[0] for k, v in r.report["subspaces"].items()}
                                           for s, r in runs.items()},
                              "chosen": {s: r.report["chosen"] for s, r in runs.items()}})
    sw = Stopwatch()

    # data: three splits; no template or name (or, for a given task, no pair) on two sides
    with sw("data"):
        given = task is not None
        if given or cfg.split_by == "pair":
            task = task if given else ioi_task(model, n=cfg.pairs, seed=cfg.seed, path=cfg.task_path)
            if len(task.clean) < 4:
                raise InterpError(f"need at least 4 prompt pairs (train DAS, validate the choices, test), "
                                  f"got {len(task.clean)}")
            splits = split_groups(range(len(task.clean)), cfg.fractions, cfg.seed, unit="pair")
            tasks = {s: task.subset(getattr(splits, s)) for s in ("train", "val", "test")}
            held = {}
        else:
            tasks, info = ioi_splits(model, n=cfg.pairs, seed=cfg.seed, path=cfg.task_path, fractions=cfg.fractions)
            splits = info["splits"]
            held = {"templates": info["templates"], "names": info["names"]}
        train, val, test = (Pairs(model, tasks[s]) for s in ("train", "val", "test"))
        n = len(splits.train) + len(splits.val) + len(splits.test)

    # capture + intervene on VALIDATION pairs: the sweep, the DAS sites and the read-out it points to
    with sw("sweep (validation)"):
        sweep = sweep_pairs(val, cfg.sites, positions=cfg.positions, progress=cfg.progress)
        sweep["split"] = f"validation pairs (n={len(splits.val)})"
        if val.task.roles:
            sweep["roles"] = {str(p): r for r, p in val.task.roles.items() if p in sweep["positions"]}
        reader_layer, resid_layer, mlp_layer = _choose_layers(sweep, model.n_layers, cfg)
        readout, heads = cfg.readout, None
        if readout is None:
            heads = sweep_pairs(val, ("attn_z",), layers=[reader_layer], progress=False)["effects"]["attn_z"][0]
            top = sorted(range(model.n_heads), key=lambda h: -heads[h])[:cfg.reader_heads]
            readout = f"q.{reader_layer}:{','.join(map(str, sorted(top)))}"

    # fit (DAS on training pairs) and evaluate (checks on TEST pairs, read once here), per subspace
    subspaces = {}
    for key, site, reader in (("mlp", f"mlp_act.{mlp_layer}", None), ("resid", f"resid_pre.{resid_layer}", readout)):
        with sw(f"das {key} (train)"):
            v = learn_das(model, train, site, -1, steps=cfg.das_steps, lr=cfg.das_lr, seed=cfg.seed,
                          progress=cfg.progress)
            md = mean_difference_direction(model, train, site)
            das_train = direction_effect(model, train, site, v)
        with sw(f"checks {key} (test)"):
            checks = check_subspace(model, test, site, v, -1, reader, faithful_share=cfg.faithful_share)
            g = torch.Generator().manual_seed(cfg.seed + 1)
            randoms = [direction_effect(model, test, site, r / r.norm(), fldd=True)
                       for r in (torch.randn(v.numel(), generator=g) for _ in range(cfg.random_directions))]
            md_effect, md_fldd = direction_effect(model, test, site, md, fldd=True)
            subspaces[key] = {"site": site, "reader": "down projection" if reader is None else reader,
                              **checks.to_dict(),
                              "das_effect_train": das_train,
                              "mean_difference_effect": md_effect, "mean_difference_fldd": md_fldd,
                              "random_effect": [e for e, _ in randoms], "random_fldd": [f for _, f in randoms],
                              "cos_das_mean_difference": float(torch.nn.functional.cosine_similarity(
                                  v.double(), md.double().to(v.device), dim=0))}

    # report
    report = {"model": model.describe(), "n_pairs": n, "sweep": sweep, "subspaces": subspaces,
              "fraction_of_effect": subspaces["mlp"]["fraction_of_effect"], "verdict": subspaces["mlp"]["verdict"],
              "chosen": {"reader_layer": reader_layer, "resid_layer": resid_layer, "mlp_layer": mlp_layer,
                         "readout": readout, "on": "validation"},
              # how well the model does the task on each split (a split of hard templates gives noisy fractions)
              "metrics": {name: {"clean": p.m_clean.mean().item(), "corrupted": p.m_corr.mean().item(),
                                 "clean_solved": (p.m_clean > 0).float().mean().item(), "n": len(p.task.clean)}
                          for name, p in (("train", train), ("val", val), ("test", test))}}
    if heads is not None:
        report["reader_heads"] = {"layer": reader_layer, "attn_z_effects": heads, "split": "validation"}
    protocol = protocol_block(
        splits, task="given to run()" if given else (cfg.task_path or "data/ioi_task.json"),
        choices="residual layer, MLP layer and reader heads from the patching sweep over validation pairs "
                "(each only when not given in the config)",
        fit="DAS and the mean-difference direction on training pairs",
        reported="every fraction of effect, FLDD, random control and verdict on test pairs, read once", **held)
    report["protocol"] = protocol
    result = Result("patching", report, figures=_figures(report), headlines=_headlines(report, splits),
                    conclusion=" | ".join(f"{r['site']}: {r['verdict'].split(':')[0]} on test pairs (raw-part patch, "
                                          f"as before: {r['unnormalized']['verdict'].split(':')[0]})"
                                          for r in subspaces.values()),
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


def _headlines(report: dict, splits) -> list[Headline]:
    test = f"test pairs (n={len(splits.test)}, {splits.unit} split)"
    out = []
    for key, r in report["subspaces"].items():
        f, fl = r["fraction_of_effect"], r["fldd"]
        where = f"{r['site']} (read by {r['reader']})"
        for part, label in (("das", "DAS direction"), ("rowspace", "its rowspace part"),
                            ("nullspace", "its nullspace part"), ("full", "full component")):
            out.append(Headline(f"{where}: {label}, fraction of effect", f[part], test,
                                note="interp's 0→1 scale (1 = clean run); the paper reports FLDD"))
            out.append(Headline(f"{where}: {label}, FLDD (%)", fl[part], test, paper=PAPER[key][part]))
        best_random = max(r["random_effect"], default=float("nan"))
        out.append(Headline(f"{where}: DAS direction minus the best random direction, fraction of effect",
                            f["das"] - best_random, test, target="> 0"))
        out.append(Headline(f"{where}: DAS direction on its training pairs, fraction of effect", r["das_effect_train"],
                            f"training pairs (n={len(splits.train)})"))
        out.append(Headline(f"{where}: verdict", r["verdict"].split(":")[0], test,
                            paper="illusory" if key == "mlp" else "faithful", note=r["verdict"]))
        out.append(Headline(f"{where}: verdict with raw (unnormalized) parts, the earlier patch",
                            r["unnormalized"]["verdict"].split(":")[0], test, note=r["unnormalized"]["verdict"]))
    return out
