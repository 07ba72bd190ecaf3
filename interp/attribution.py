"""Attribution patching (AtP): a gradient estimate of every site's activation-patching effect.

Activation patching runs one forward per site (and per position or head) and
pair. Attribution patching (Nanda 2023; Kramár et al. 2024, "AtP*") replaces
each of those forwards by the first-order Taylor term around the corrupted run:

    effect(site) ≈ (a_clean(site) − a_corrupted(site)) · ∂metric/∂a(site) |corrupted

so one clean forward, one corrupted forward and one backward give every
site's estimate at once, per position (``resid_*``, ``attn_out``,
``mlp_out``, ``mlp_act``) or per head (``attn_z``). The direction matches
``interp.experiments.patching`` (clean values patched into the corrupted run),
and ``Attribution.grid`` normalizes as its sweep does (0 = corrupted, 1 = clean).

How it runs on interp's path: clean activations come from a ``Record``
intervention; the corrupted run adds a zero tensor that requires grad at each
site (``x + δ``, so ∂metric/∂δ is the total derivative at that site, through
every later site too) under ``model.intervene``; the model's weights are frozen
for the backward, so no parameter gradient is computed.

From AtP*: GradDrop (``graddrop=True``) is implemented: for each layer l the
backward runs with the gradient through layer l's attention and MLP outputs
dropped, and the estimate is Σ_l |AtP_l| / (L − 1), an unsigned score that
avoids false negatives from cancelling paths; it costs L more forward +
backward passes. The QK fix (recomputing the attention softmax for patched
queries and keys) is not implemented: interp's sites here are head outputs and
stream sites, which AtP* estimates with plain AtP; see docs/tools.md.

Example:
    task = ioi_task(model, n=16)
    atp = attribution_patching(model, task, sites=["resid_pre", "attn_z"])
    atp.grid("resid_pre", positions=[-1, -2, -3])   # [layers][positions], normalized
    atp.grid("attn_z")                              # [layers][heads]
    compare_with_patching(model, task, ["resid_pre"])["spearman_vs_activation_patching"]
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from .data.ioi import PatchTask
from .errors import InterpError
from .evaluation import logit_diff
from .interventions import Compose, Context, Intervention, Record
from .sites import Site, SiteLike, expand_sites, parse_site

Metric = Callable[..., torch.Tensor]

__all__ = ["Attribution", "attribution_patching", "compare_with_patching", "spearman"]


class _Tap(Intervention):
    """x ← x + δ with δ = 0 requiring grad: ∂metric/∂δ is the gradient at the site; x itself is kept."""

    def __init__(self):
        super().__init__("all")
        self.value: torch.Tensor | None = None
        self.delta: torch.Tensor | None = None

    def apply(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        self.value = x.detach()
        self.delta = torch.zeros_like(x, requires_grad=True)
        return x + self.delta


class _StopGrad(Intervention):
    """Same value, no gradient back through it (GradDrop)."""

    def __init__(self):
        super().__init__("all")

    def apply(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        return x.detach()


@dataclass
class Attribution:
    """What ``attribution_patching`` returns.

    ``estimates[site]`` is the AtP estimate of patching that site from clean into corrupted, in metric
    units, per pair and per position, right-aligned ([pairs, width]; column −1 is each prompt's last
    token, zero left of a shorter prompt), with a head axis for ``attn_z`` ([pairs, width, heads]).
    ``m_clean`` and ``m_corrupted`` are the metric per pair; ``seconds`` the wall time.
    """

    estimates: dict[str, torch.Tensor]
    m_clean: torch.Tensor
    m_corrupted: torch.Tensor
    lengths: torch.Tensor
    n_layers: int
    method: str = "atp"
    seconds: float = 0.0
    sites: list[str] = field(default_factory=list)

    @property
    def gap(self) -> float:
        """Mean clean − corrupted metric: the normalizer of ``grid`` (as the patching sweep's)."""
        return (self.m_clean - self.m_corrupted).mean().item()

    def __getitem__(self, site: SiteLike) -> torch.Tensor:
        key = str(expand_sites(site, self.n_layers)[0])
        if key not in self.estimates:
            raise InterpError(f"no estimate for {key}; estimated: {', '.join(self.estimates)}")
        return self.estimates[key]

    def effect(self, site: SiteLike, positions: Sequence[int] | None = None) -> torch.Tensor:
        """Normalized mean estimate (0 = corrupted, 1 = clean): per position from the end for a stream site,
        per head (summed over every position) for ``attn_z``."""
        est = self[site] / self.gap
        if est.dim() == 3:  # per head (attn_z, q/k/v): one head patched at every position at once
            return est.sum(1).mean(0)
        positions = list(range(-est.shape[1], 0)) if positions is None else list(positions)
        width = est.shape[1]
        if any(not -width <= p < 0 for p in positions):
            raise InterpError(f"positions count from the end (-1 = last token) within {width} tokens, got {positions}")
        return est[:, [width + p for p in positions]].mean(0)

    def grid(self, name: str, positions: Sequence[int] | None = None,
             layers: Sequence[int] | None = None) -> list[list[float]]:
        """[layers][positions] (or [layers][heads] for ``attn_z``) of ``effect``, the patching sweep's layout."""
        if layers is None:
            layers = sorted({parse_site(k, self.n_layers).layer for k in self.estimates
                             if parse_site(k, self.n_layers).name == name}, key=lambda x: -1 if x is None else x)
        return [self.effect(Site(name, layer), positions).tolist() for layer in layers]

    def to_dict(self, positions: Sequence[int] | None = None) -> dict:
        """The patching sweep's layout: {"positions", "layers", "effects": {name: grid}, metrics, seconds}."""
        by_name: dict[str, list] = {}
        for k in self.estimates:
            site = parse_site(k, self.n_layers)
            by_name.setdefault(site.name, []).append(site.layer)
        layers = sorted({layer for ls in by_name.values() for layer in ls if layer is not None})
        width = int(self.lengths.max())
        return {"method": self.method, "positions": list(range(-width, 0)) if positions is None else list(positions),
                "layers": layers, "seconds": self.seconds, "clean_metric": self.m_clean.mean().item(),
                "corrupted_metric": self.m_corrupted.mean().item(),
                "effects": {n: self.grid(n, positions, ls) for n, ls in by_name.items()}}


def _batches(model, clean, corrupted, answers):
    """Token lists of equal length per pair, and the answers (or None)."""
    if isinstance(clean, PatchTask):
        if corrupted is not None:
            raise InterpError("give either a PatchTask or clean and corrupted prompt lists, not both")
        clean, corrupted, answers = clean.clean, clean.corrupted, clean.answers if answers is None else answers
    if corrupted is None or len(clean) != len(corrupted) or not len(clean):
        raise InterpError("attribution patching needs clean and corrupted prompts, as many of each (at least one)")
    c_ids, x_ids = model.encode(list(clean), chat=False).ids, model.encode(list(corrupted), chat=False).ids
    for i, (a, b) in enumerate(zip(c_ids, x_ids)):
        if len(a) != len(b):
            raise InterpError(f"pair {i} has {len(a)} clean and {len(b)} corrupted tokens ({clean[i]!r} vs "
                              f"{corrupted[i]!r}); patching, and so its estimate, needs equal token lengths")
    if answers is not None and len(answers) != len(c_ids):
        raise InterpError(f"{len(answers)} answers for {len(c_ids)} pairs")
    return c_ids, x_ids, answers


def _metric(metric: Metric, logits: torch.Tensor, answers) -> torch.Tensor:
    m = metric(logits) if answers is None else metric(logits, answers)
    if not isinstance(m, torch.Tensor) or m.shape != logits.shape[:1]:
        raise InterpError(f"the metric must return one value per pair (shape [{logits.shape[0]}]), got "
                          f"{tuple(m.shape) if isinstance(m, torch.Tensor) else type(m).__name__}")
    if not torch.isfinite(m).all():
        raise InterpError("the metric returned NaN or infinite values")
    return m


def _last_logits(model, batch) -> torch.Tensor:
    """Last-position logits with the graph kept (``model.last_logits`` runs without grad)."""
    h = model.hf.base_model(**batch, use_cache=False).last_hidden_state
    return model.unembed(h[:, -1])


def attribution_patching(model, clean: Sequence[str] | PatchTask, corrupted: Sequence[str] | None = None,
                         metric: Metric = logit_diff, sites: SiteLike | Sequence[SiteLike] = (
                             "resid_pre", "attn_out", "mlp_out", "attn_z"),
                         *, answers: torch.Tensor | None = None, batch_size: int = 16, graddrop: bool = False,
                         progress: bool = True) -> Attribution:
    """AtP estimates of patching each site from the clean run into the corrupted run, per position or head.

    ``clean`` and ``corrupted`` are prompt lists of equal token length pair by pair (no chat template), or
    ``clean`` is a ``PatchTask`` (IOI: ``interp.data.ioi.ioi_task``) and ``corrupted`` is left out.
    ``metric(last_logits[, answers]) -> [pairs]`` is what patching moves (default: the logit difference of
    the task's answers); it is called with the batch's ``answers`` rows when there are answers. ``sites``
    are site names (a bare name means every layer). Cost: one clean forward, one corrupted forward and
    one backward per batch (``graddrop``: L more of each, see the module docstring).

    Example:
        atp = attribution_patching(model, ["When Mary and John ..., John gave it to"],
                                   ["When Mary and John ..., Mary gave it to"],
                                   metric=lambda logits: logits[:, mary] - logits[:, john], sites=["resid_pre"])
        atp.grid("resid_pre", positions=[-1])
    """
    t0 = time.perf_counter()
    if batch_size < 1:
        raise InterpError(f"batch_size must be >= 1, got {batch_size}")
    site_list = expand_sites(sites, model.n_layers)
    if any(s.name == "attn_pattern" for s in site_list):
        raise InterpError("attention patterns are read-only sites; attribute to attn_q, attn_k, attn_v or attn_z "
                          "instead (AtP*'s exact softmax for queries and keys is not implemented)")
    keys = [str(s) for s in site_list]
    c_ids, x_ids, answers = _batches(model, clean, corrupted, answers)
    n = len(c_ids)
    lengths = torch.tensor([len(x) for x in c_ids])
    width = int(lengths.max())
    est = {k: torch.zeros((n, width) + model.site_shape(s)[:-1])  # a head axis for attn_z and q/k/v
           for k, s in zip(keys, site_list)}
    m_clean, m_corr = torch.zeros(n), torch.zeros(n)
    frozen = [p for p in model.hf.parameters() if p.requires_grad]
    drops = list(range(model.n_layers)) if graddrop else [None]
    try:
        for p in frozen:  # gradients for the activations only
            p.requires_grad_(False)
        bar = tqdm(range(0, n, batch_size), desc="attribution patching", disable=not progress or n <= batch_size)
        for start in bar:
            rows = list(range(start, min(n, start + batch_size)))
            ans = None if answers is None else answers[rows]
            cb, xb = model.pad([c_ids[i] for i in rows]), model.pad([x_ids[i] for i in rows])
            rec = {k: Record() for k in keys}
            with model.intervene(rec):
                m_clean[rows] = _metric(metric, model.last_logits(cb), ans).detach().float().cpu()
            w = cb["input_ids"].shape[1]
            valid = cb["attention_mask"].bool()
            for layer in drops:
                taps = {k: _Tap() for k in keys}
                ivs: dict = dict(taps)
                if layer is not None:  # GradDrop: no gradient back through layer l's writes to the stream
                    for name in ("attn_out", "mlp_out"):
                        key = f"{name}.{layer}"
                        ivs[key] = Compose([_StopGrad(), taps[key]]) if key in taps else _StopGrad()
                with model.intervene(ivs), torch.enable_grad():
                    m = _metric(metric, _last_logits(model, xb), ans)
                    m.sum().backward()  # pairs are independent rows: each row's gradient is its own
                if layer is None or layer == drops[0]:
                    m_corr[rows] = m.detach().float().cpu()
                for k in keys:
                    t = taps[k]
                    g = t.delta.grad if t.delta.grad is not None else torch.zeros_like(t.delta)
                    part = ((rec[k].value.to(g.dtype) - t.value) * g).sum(-1)  # [b, w] or [b, w, heads]
                    part = part * valid.reshape(valid.shape + (1,) * (part.dim() - 2))
                    part = part.detach().float().cpu()
                    if layer is not None:
                        part = part.abs() / max(1, model.n_layers - 1)
                    est[k][rows, width - w:] += part
    finally:
        for p in frozen:
            p.requires_grad_(True)
    return Attribution(est, m_clean, m_corr, lengths, model.n_layers, "atp+graddrop" if graddrop else "atp",
                       time.perf_counter() - t0, keys)


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation (ties get their average rank).

    Example:
        >>> round(spearman([1, 2, 3, 4], [10, 20, 40, 30]), 6)
        0.8
    """
    from scipy.stats import spearmanr

    if len(a) != len(b) or len(a) < 2:
        raise InterpError(f"need two equally long lists of at least 2 values, got {len(a)} and {len(b)}")
    r = spearmanr(a, b).statistic
    return float(r)


def compare_with_patching(model, task: PatchTask, sites: Sequence[str] = ("resid_pre", "attn_out", "mlp_out"),
                          positions: Sequence[int] = (-1, -2, -3, -4, -5), metric: Metric = logit_diff,
                          batch_size: int = 16, graddrop: bool = False, progress: bool = True) -> dict:
    """AtP and the real activation-patching sweep on the same pairs, side by side in one run.

    Both are timed here (AtP: its forwards and backward; the sweep: its two baseline forwards and one
    patched forward per site × layer × position, or × head for ``attn_z``), so ``speedup`` = sweep
    seconds / AtP seconds. ``spearman_vs_activation_patching`` ranks every grid cell of a site (layers ×
    positions or heads) by AtP against the sweep, per site and over all sites together.

    Example:
        out = compare_with_patching(model, ioi_task(model, n=16), ["resid_pre"], positions=[-1, -2])
        out["spearman_vs_activation_patching"]["resid_pre"], out["speedup"]
    """
    from .experiments._patching import Pairs, sweep_pairs

    # the sweep first, so that AtP is not the one that warms up the model's kernels and caches
    t0 = time.perf_counter()
    pairs = Pairs(model, task, metric)
    sweep = sweep_pairs(pairs, list(sites), positions=list(positions), progress=progress)
    t_sweep = time.perf_counter() - t0
    atp = attribution_patching(model, task, metric=metric, sites=list(sites), batch_size=batch_size,
                               graddrop=False, progress=progress)
    report = {"n_pairs": len(task.clean), "positions": list(positions), "sites": list(sites),
              "attribution": atp.to_dict(list(positions)), "activation_patching": sweep,
              "seconds": {"attribution": atp.seconds, "activation_patching": t_sweep},
              "speedup": t_sweep / atp.seconds, "forwards": {
                  "attribution": 2 * -(-len(task.clean) // batch_size),
                  "activation_patching": 2 + sum(len(g) * len(g[0]) for g in sweep["effects"].values())}}
    rho, all_a, all_p = {}, [], []
    for name in sites:
        a = [v for row in report["attribution"]["effects"][name] for v in row]
        p = [v for row in sweep["effects"][name] for v in row]
        rho[name] = spearman(a, p)
        all_a += a
        all_p += p
    rho["all"] = spearman(all_a, all_p)
    report["spearman_vs_activation_patching"] = rho
    if graddrop:  # unsigned: ranked against the size of the real effect
        gd = attribution_patching(model, task, metric=metric, sites=list(sites), batch_size=batch_size,
                                  graddrop=True, progress=progress)
        report["graddrop"] = gd.to_dict(list(positions))
        report["seconds"]["graddrop"] = gd.seconds
        report["spearman_graddrop_vs_abs_activation_patching"] = {
            name: spearman([v for row in report["graddrop"]["effects"][name] for v in row],
                           [abs(v) for row in sweep["effects"][name] for v in row]) for name in sites}
    return report
