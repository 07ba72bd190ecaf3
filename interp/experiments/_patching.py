"""The pieces of the patching experiment: sweep, DAS, reader matrices, subspace checks.

A ``PatchTask`` (``interp.data.ioi``) holds clean/corrupted prompt pairs of
equal token length and the two answer tokens per pair; the metric is the
logit difference (clean answer − corrupted answer) at the last position
(``interp.evaluation.logit_diff``), or any callable. Effects are normalized:
0 = the corrupted run, 1 = the clean run.

Every edit is an ``Intervention`` under ``model.intervene``: ``Patch`` for a
component at one position (``heads=[h]`` for one head of ``attn_z``),
``ProjectionPatch`` for w' = w + p pᵀ(u − w) along a vector (trainable, as
given; the checks pass unit vectors). Clean activations come from
``run_with_cache``. ``Pairs.measure`` gives the paper's FLDD beside the
normalized effect.

- ``patching_sweep``: patch each site × layer × position (and each head of
  ``attn_z``) from clean into corrupted.
- ``learn_das``: a unit direction v at one site/layer/position such that the
  1-D patch along v moves the corrupted run to the clean answer (Adam on v;
  for one vector pyvene's rotated-space intervention is just v).
- ``check_subspace``: the illusion checks of ``interp.analyzers.illusion``
  for that direction, with the MLP down projection (``mlp_act``) or a named
  read-out (``q.L:h,h``, ``answers``, ``unembed``) as the reader.

Example:
    task = ioi_task(model, n=32)
    sweep = patching_sweep(model, task, ["resid_pre", "attn_out", "mlp_out"])
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from .. import arch
from ..analyzers.illusion import IllusionReport, illusion_checks
from ..capture import run_with_cache
from ..data.ioi import PatchTask
from ..errors import InterpError
from ..evaluation import logit_diff
from ..interventions import Patch, ProjectionPatch
from ..prefix import LeadingColumns
from ..sites import Site, parse_site

Metric = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
READOUT_HELP = "'q.LAYER:HEAD,HEAD' (those heads' query projections), 'answers' or 'unembed'"


class Pairs:
    """A task's clean and corrupted batches, their metrics, and patched runs of the corrupted batch.

    Example:
        pairs = Pairs(model, task)
        cache = pairs.cache(["resid_pre.3"])
        pairs.effect({"resid_pre.3": Patch(cache, "resid_pre.3", positions=[-1])}).mean()
    """

    def __init__(self, model, task: PatchTask, metric: Metric = logit_diff):
        self.model, self.task, self.metric = model, task, metric
        clean_ids = model.encode(task.clean, chat=False).ids
        corr_ids = model.encode(task.corrupted, chat=False).ids
        bad = [i for i, (a, b) in enumerate(zip(clean_ids, corr_ids)) if len(a) != len(b)]
        if bad:
            i = bad[0]
            raise InterpError(f"pair {i} has {len(clean_ids[i])} clean and {len(corr_ids[i])} corrupted tokens "
                              f"({task.clean[i]!r} vs {task.corrupted[i]!r}); patching needs equal lengths")
        self.clean, self.corr = model.pad(clean_ids), model.pad(corr_ids)
        self.min_len = min(len(x) for x in clean_ids)
        self.answers = task.answers.to(model.device)
        self.m_clean = self._metric(model.last_logits(self.clean))
        self.m_corr = self._metric(model.last_logits(self.corr))
        gap = (self.m_clean - self.m_corr).mean().item()
        if abs(gap) < 1e-6:
            raise InterpError("clean and corrupted runs give the same metric; nothing to patch")
        self.gap = gap

    def _metric(self, logits: torch.Tensor, answers: torch.Tensor | None = None) -> torch.Tensor:
        m = self.metric(logits, self.answers if answers is None else answers)
        if not torch.isfinite(m).all():
            raise InterpError("the metric returned NaN or infinite values")
        return m

    def cache(self, sites: Sequence[Site | str], corrupted: bool = False):
        """``run_with_cache`` of the clean (or corrupted) batch at ``sites``: a patch source."""
        return run_with_cache(self.model, self.corr if corrupted else self.clean, [str(s) for s in sites],
                              logits=False)

    def effect(self, interventions: dict, grad: bool = False) -> torch.Tensor:
        """Normalized effect per pair of running the corrupted batch under ``interventions``."""
        return (self.patched_metric(interventions, grad) - self.m_corr) / self.gap

    def patched_metric(self, interventions: dict, grad: bool = False) -> torch.Tensor:
        """The metric per pair of the corrupted batch run under ``interventions``."""
        with self.model.intervene(interventions):
            logits = _last_logits_grad(self.model, self.corr) if grad else self.model.last_logits(self.corr)
        return self._metric(logits)

    def measure(self, interventions: dict) -> tuple[float, float]:
        """(normalized effect, the paper's FLDD in %) of one patch, averaged over the pairs.

        The paper's FLDD is 100·(1 − LD_patched / LD_base) with LD the mean logit
        difference of the base prompt's own answer over its other name (the
        official ``ioi_analysis`` notebook's ``include_fractional_ld``). The base
        here is the corrupted prompt, whose own answer is the corrupted one, so
        LD = −metric and FLDD = 100·(1 − mean patched metric / mean corrupted metric).
        """
        m = self.patched_metric(interventions)
        return ((m - self.m_corr) / self.gap).mean().item(), 100.0 * (1.0 - m.mean().item() / self.m_corr.mean().item())


def _last_logits_grad(model, batch: dict) -> torch.Tensor:
    """Last-position logits with the graph kept (the unembedding runs on that position only)."""
    with torch.enable_grad():
        return model.hf(**batch, use_cache=False, logits_to_keep=1).logits[:, -1]


def check_positions(positions: Sequence[int], min_len: int) -> list[int]:
    """Positions from the end (−1 = last token) that fit the shortest prompt."""
    positions = list(positions)
    if any(not -min_len <= p < 0 for p in positions):
        raise InterpError(f"positions must be negative (from the end) and within the shortest prompt "
                          f"({min_len} tokens), got {positions}")
    return positions


def sweep_pairs(pairs: Pairs, sites: Sequence[str], layers: Sequence[int] | None = None,
                positions: Sequence[int] | None = None, progress: bool = True, batch_rows: int = 256) -> dict:
    """``patching_sweep`` on prepared ``Pairs`` (their metrics are reused).

    The patches are stacked into the batch: per site and layer, one row per
    (position or head, pair), each row the pair's corrupted prompt with its
    own patch target (one ``Patch`` with per-prompt positions or heads), at
    most ``batch_rows`` rows per forward. Blocks below the patched layer
    cannot change, so they are not rerun: the corrupted run's ``resid_pre``
    there is the input (``model.last_logits(start_layer=...)``); nor can the
    tokens before the first patched position, so for position sites their
    keys and values come from the corrupted run's KV cache. Equals one
    ``Pairs.effect`` per patch up to float rounding (tests/test_patching.py).

    Example:
        pairs = Pairs(model, ioi_task(model, n=8))
        sweep_pairs(pairs, ["attn_out"], layers=[0, 1], positions=[-1, -2])["effects"]["attn_out"]  # [2][2]
    """
    if batch_rows < 1:
        raise InterpError(f"batch_rows must be at least 1, got {batch_rows}")
    model = pairs.model
    layers = list(range(model.n_layers)) if layers is None else list(layers)
    positions = list(range(-pairs.min_len, 0)) if positions is None else check_positions(positions, pairs.min_len)
    out: dict = {"positions": positions, "layers": layers, "clean_metric": pairs.m_clean.mean().item(),
                 "corrupted_metric": pairs.m_corr.mean().item(), "effects": {}}
    # what the patched forwards reuse from the corrupted run (HF backend; other backends run whole forwards,
    # still stacked): each layer's block input (blocks below the patched layer cannot change) and the keys
    # and values of the columns before the first patched token (left padding lines up the prompts' ends,
    # so position p is column width + p in every row)
    fast = getattr(model, "backend", "hf") == "hf"
    above = [Site("resid_pre", layer) for layer in sorted(set(layers)) if layer > 0] if fast else []
    starts = pairs.cache(above, corrupted=True) if above else None
    cut = pairs.corr["input_ids"].shape[1] + min(positions) if positions else 0
    lead = LeadingColumns.of(model, pairs.corr, cut if any(name != "attn_z" for name in sites) else 0)
    whole = LeadingColumns(pairs.corr, 0)
    for name in sites:
        site_list = [parse_site((name, layer), model.n_layers) for layer in layers]
        clean = pairs.cache(site_list)
        grid = []
        for site in tqdm(site_list, desc=f"sweep {name}", disable=not progress):
            resid = starts[Site("resid_pre", site.layer)] if starts is not None and site.layer > 0 else None
            if name == "attn_z":  # one head at every position at once
                grid.append(_stacked_effects(pairs, clean, site, list(range(model.n_heads)), True, resid, whole,
                                             batch_rows))
            else:
                grid.append(_stacked_effects(pairs, clean, site, positions, False, resid, lead, batch_rows))
        out["effects"][name] = grid
    return out


def _stacked_effects(pairs: Pairs, clean, site: Site, targets: list[int], heads: bool, resid: torch.Tensor | None,
                     lead: LeadingColumns, batch_rows: int) -> list[float]:
    """Mean normalized effect over the pairs of patching ``site`` at each target (a position, or a head at
    every prompt position), the (target, pair) patches stacked as rows of as few forwards as ``batch_rows``
    allows. With ``resid`` (the corrupted ``resid_pre`` of the site's layer) only blocks from that layer up
    run; with a ``lead`` that caches the corrupted run's first columns, only the columns after them."""
    model, n = pairs.model, pairs.m_corr.shape[0]
    source, source_mask = clean[site], clean.attention_mask.bool()
    rows = [(t, i) for t in range(len(targets)) for i in range(n)]
    total = torch.zeros(len(targets), dtype=torch.float64)
    for c in range(0, len(rows), batch_rows):
        part = rows[c:c + batch_rows]
        which = torch.tensor([t for t, _ in part])
        pair = torch.tensor([i for _, i in part])
        at = [[targets[t]] for t, _ in part]
        src, src_mask = source[pair.to(source.device)], source_mask[pair.to(source_mask.device)]
        patch = (Patch(src, positions="prompt", heads=at, source_mask=src_mask) if heads else
                 Patch(src, positions=at, source_mask=src_mask))
        pair = pair.to(model.device)
        batch, kw = lead.rest(pair)  # the columns after the cached ones, if any; the mask spans both
        if resid is not None:
            kw.update(start_layer=site.layer, resid=resid[pair.to(resid.device)][:, lead.cut:])
        with model.intervene({site: patch}):
            logits = model.last_logits(batch, **kw)
        m_corr = pairs.m_corr[pair.to(pairs.m_corr.device)]
        effect = (pairs._metric(logits, pairs.answers[pair]) - m_corr) / pairs.gap
        total.index_add_(0, which, effect.double().cpu())
    return (total / n).tolist()


def patching_sweep(model, task: PatchTask, sites: Sequence[str] = ("resid_pre", "attn_out", "mlp_out"),
                   layers: Sequence[int] | None = None, positions: Sequence[int] | None = None,
                   metric: Metric = logit_diff, progress: bool = True, batch_rows: int = 256) -> dict:
    """Normalized effect of patching each (site, layer, position) from clean into corrupted.

    Positions count from the end (−1 = last token). ``attn_z`` is patched
    head by head at every position at once. Returns {site: [layers][positions
    or heads]} plus the baseline metrics. The patches of one layer run
    stacked, at most ``batch_rows`` rows (patch × pair) per forward (see
    ``sweep_pairs``).
    """
    return sweep_pairs(Pairs(model, task, metric), sites, layers, positions, progress, batch_rows)


def _site(model, site: str) -> Site:
    s = parse_site(site, model.n_layers)
    d = model.site_shape(s)[-1]
    if model.site_shape(s) != (d,):
        raise InterpError(f"DAS here learns one vector; {s} has shape {model.site_shape(s)}")
    return s


def learn_das(model, task: PatchTask | Pairs, site: str, position: int = -1, steps: int = 60, lr: float = 1e-2,
              seed: int = 0, metric: Metric = logit_diff, progress: bool = True) -> torch.Tensor:
    """A unit direction at ``site`` (one layer) whose 1-D patch moves corrupted runs to the clean answer."""
    pairs = task if isinstance(task, Pairs) else Pairs(model, task, metric)
    s = _site(model, site)
    source = pairs.cache([s])
    d = model.site_shape(s)[-1]
    start = torch.randn(d, generator=torch.Generator().manual_seed(seed))
    # a unit-norm start, so that lr is a step size relative to the direction rather than to a norm of ~sqrt(d)
    raw = torch.nn.Parameter((start / start.norm()).to(model.device))
    opt = torch.optim.Adam([raw], lr=lr)
    frozen = [p for p in model.hf.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        for _ in tqdm(range(steps), desc=f"DAS {s}", disable=not progress):
            v = raw / raw.norm()
            loss = -pairs.effect({s: ProjectionPatch(v, source, str(s), positions=[position])}, grad=True).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        for p in frozen:
            p.requires_grad_(True)
    return (raw / raw.norm()).detach()


def direction_effect(model, task: PatchTask | Pairs, site: str, p: torch.Tensor | None, position: int = -1,
                     metric: Metric = logit_diff, fldd: bool = False) -> float | tuple[float, float]:
    """Normalized effect of the patch along ``p`` as given (or the full component when None) at one position.

    With ``fldd=True``: (effect, the paper's FLDD in %), see ``Pairs.measure``.
    """
    pairs = task if isinstance(task, Pairs) else Pairs(model, task, metric)
    s = parse_site(site, model.n_layers)
    source = pairs.cache([s])
    iv = (Patch(source, str(s), positions=[position]) if p is None else
          ProjectionPatch(p.to(model.device).float(), source, str(s), positions=[position]))
    return pairs.measure({s: iv}) if fldd else pairs.effect({s: iv}).mean().item()


def mean_difference_direction(model, task: PatchTask | Pairs, site: str, position: int = -1) -> torch.Tensor:
    """Unit vector along the mean over pairs of clean − corrupted at one site and position."""
    pairs = task if isinstance(task, Pairs) else Pairs(model, task)
    s = parse_site(site, model.n_layers)
    clean = pairs.cache([s])[s][:, position]
    other = pairs.cache([s], corrupted=True)[s][:, position]
    d = (clean - other).mean(0)
    return d / d.norm()


def parse_readout(readout: str, n_layers: int | None = None, n_heads: int | None = None) -> tuple[int, list[int]]:
    """``'q.20:3,7'`` → (20, [3, 7]), checked against the model's size when given."""
    try:
        layer_s, heads_s = readout[2:].split(":")
        layer, heads = int(layer_s), [int(h) for h in heads_s.split(",")]
    except ValueError:
        raise InterpError(f"read-out {readout!r} should look like 'q.20:3,7'") from None
    if (layer < 0 or (n_layers is not None and layer >= n_layers) or
            any(h < 0 or (n_heads is not None and h >= n_heads) for h in heads)):
        top_l = f"0..{n_layers - 1}" if n_layers else "0 and up"
        top_h = f"0..{n_heads - 1}" if n_heads else "0 and up"
        raise InterpError(f"read-out {readout!r}: layers are {top_l}, heads {top_h}")
    return layer, heads


def check_readout(readout: str | None, n_layers: int | None = None, n_heads: int | None = None) -> None:
    """Fail early on a read-out name ``reader_matrix`` would not accept."""
    if readout is None or readout in ("unembed", "answers"):
        return
    if not readout.startswith("q."):
        raise InterpError(f"unknown read-out {readout!r}; use {READOUT_HELP}")
    parse_readout(readout, n_layers, n_heads)


def reader_matrix(model, site: str, readout: str | None = None, task: PatchTask | None = None) -> torch.Tensor:
    """The matrix [out, d] that reads a site, for the rowspace/nullspace split.

    ``mlp_act`` sites: the MLP down projection (``readout`` is ignored). Other
    sites need a named read-out:

    - ``"q.L:h1,h2"``: the query projections of heads h1, h2 of layer L, with
      that block's input-norm gain folded in (what those heads' queries see);
    - ``"answers"``: the unembedding rows of the task's answer tokens;
    - ``"unembed"``: the whole unembedding (full rank when vocab > d_model, so
      nothing lies in its nullspace: a weak check).
    """
    s = parse_site(site, model.n_layers)
    lay = arch.layout(model)
    if s.name == "mlp_act":
        w = arch.module(model, s.layer, lay.mlp_down).weight.detach()
        return w.T if lay.conv1d else w  # [d_model, d_mlp]
    if readout is None:
        raise InterpError(f"{s} has no down projection; name a read-out for the rowspace split: {READOUT_HELP}")
    if readout == "unembed":
        return model.hf.get_output_embeddings().weight.detach()
    if readout == "answers":
        if task is None:
            raise InterpError("readout='answers' needs the task")
        ids = torch.unique(task.answers.flatten())
        return model.hf.get_output_embeddings().weight.detach()[ids.to(model.device)]
    if readout.startswith("q."):
        layer, heads = parse_readout(readout, model.n_layers, model.n_heads)
        if s.name not in ("resid_pre", "resid_mid", "resid_post") or layer < s.layer + (s.name != "resid_pre"):
            raise InterpError(f"read-out {readout!r} must read the residual stream at or after {s}")
        wq = arch.module(model, layer, lay.attn_q).weight.detach()
        if lay.conv1d:  # Conv1D [d_in, 3·d_model]: queries are the first d_model outputs
            wq = wq[:, : model.d_model].T
        gain = arch.module(model, layer, lay.attn_in_norm).weight.detach()
        if lay.norm_offset:
            gain = gain + lay.norm_offset  # Gemma's RMSNorm scales by (1 + weight)
        rows = torch.cat([wq[h * model.d_head:(h + 1) * model.d_head] for h in heads])
        return rows * gain[None, :]
    raise InterpError(f"unknown read-out {readout!r}; use {READOUT_HELP}")


def check_subspace(model, task: PatchTask | Pairs, site: str, v: torch.Tensor, position: int = -1,
                   readout: str | None = None, metric: Metric = logit_diff,
                   faithful_share: float = 0.5) -> IllusionReport:
    """Illusion checks for direction ``v`` at ``site`` on the task's pairs: see ``interp.analyzers.illusion``."""
    s = parse_site(site, model.n_layers)
    if v.numel() != model.site_shape(s)[-1]:
        raise InterpError(f"direction of size {v.numel()} does not match {s} of size {model.site_shape(s)[-1]}")
    pairs = task if isinstance(task, Pairs) else Pairs(model, task, metric)
    reader = reader_matrix(model, site, readout, pairs.task)
    acts = torch.cat([pairs.cache([s])[s][:, position], pairs.cache([s], corrupted=True)[s][:, position]])

    def effect(p):
        return direction_effect(model, pairs, site, None if p is None else p.float(), position, fldd=True)

    return illusion_checks(effect, v, reader.float(), acts.float(), faithful_share)
