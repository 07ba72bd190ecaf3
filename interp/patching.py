"""Activation patching, learned 1-D subspaces (DAS), and illusion checks on a model.

A ``PatchTask`` holds clean/corrupted prompt pairs of equal token length and
the two answer tokens per pair; the metric is the logit difference (clean
answer − corrupted answer) at the last position, or any callable. Effects are
normalized: 0 = the corrupted run, 1 = the clean run.

- ``patching_sweep``: patch each site × layer × position (and each head of
  ``attn_z``) from clean into corrupted.
- ``learn_das``: a unit direction v at one site/layer/position such that
  w' = w + v vᵀ(u − w) moves the corrupted run to the clean answer (a small
  torch optimizer; pyvene's rotated-space intervention would wrap the same
  one-vector rotation, so we keep it in our own hook layer).
- ``check_subspace``: the illusion checks of ``interp.analyzers.illusion``
  for that direction, with the MLP down projection (``mlp_act``) or a named
  read-out (``unembed``) as the reader.

Example:
    task = ioi_task(model, n=32)
    sweep = patching_sweep(model, task, ["resid_pre", "attn_out", "mlp_out"])
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from .errors import InterpError
from .sites import Site, parse_site

Metric = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class PatchTask:
    """Clean/corrupted prompt pairs; ``answers[i]`` = (clean answer token, corrupted answer token)."""

    clean: list[str]
    corrupted: list[str]
    answers: torch.Tensor  # [n, 2] token ids
    roles: dict[str, int] | None = None  # named positions from the end, e.g. {"END": -1, "S2": -5}

    def subset(self, idx: Sequence[int]) -> "PatchTask":
        return PatchTask([self.clean[i] for i in idx], [self.corrupted[i] for i in idx], self.answers[list(idx)],
                         self.roles)


def logit_diff(logits: torch.Tensor, answers: torch.Tensor) -> torch.Tensor:
    """logit(clean answer) − logit(corrupted answer) per row of last-position logits."""
    return logits.gather(-1, answers[:, :1]).squeeze(-1) - logits.gather(-1, answers[:, 1:]).squeeze(-1)


def ioi_task(model, n: int = 32, seed: int = 0, path: str | Path | None = None) -> PatchTask:
    """Indirect-object identification pairs from ``data/ioi_task.json`` (single-token names only)."""
    from .data.prompts import DATA_DIR

    spec = json.loads(Path(path or DATA_DIR / "ioi_task.json").read_text())
    names = [m for m in spec["names"] if len(model.tokenizer.encode(" " + m, add_special_tokens=False)) == 1]
    if len(names) < 2:
        raise InterpError("fewer than two names are single tokens for this tokenizer")
    rng = random.Random(seed)
    clean, corrupted, answers = [], [], []
    for i in range(n):
        a, b = rng.sample(names, 2)
        t = spec["templates"][i % len(spec["templates"])]
        clean.append(t.format(A=a, B=b, C=b))  # B repeats: the answer is A
        corrupted.append(t.format(A=a, B=b, C=a))  # A repeats: the answer is B
        ids = [model.tokenizer.encode(" " + x, add_special_tokens=False)[0] for x in (a, b)]
        answers.append(ids)
        s2 = (spec.get("roles") or {}).get("S2")
        if s2 is not None:  # a word that splits into several tokens would shift S2 for this template only
            tok_c, tok_x = (model.tokenizer.encode(x, add_special_tokens=False) for x in (clean[-1], corrupted[-1]))
            where = [j - len(tok_c) for j in range(min(len(tok_c), len(tok_x))) if tok_c[j] != tok_x[j]]
            if len(tok_c) != len(tok_x) or where != [s2]:
                raise InterpError(f"template {t!r}: the pair differs at positions {where} from the end, not at "
                                  f"S2 = {s2} as 'roles' says; a word after {{C}} is probably several tokens")
    return PatchTask(clean, corrupted, torch.tensor(answers), spec.get("roles"))


class _Runner:
    """Padded clean/corrupted batches of a task, their metrics and cached clean activations."""

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
        with torch.no_grad():
            self.m_clean = self._metric(model.last_logits(self.clean))
            self.m_corr = self._metric(model.last_logits(self.corr))
        gap = (self.m_clean - self.m_corr).mean().item()
        if abs(gap) < 1e-6:
            raise InterpError("clean and corrupted runs give the same metric; nothing to patch")
        self.gap = gap

    def _metric(self, logits: torch.Tensor) -> torch.Tensor:
        m = self.metric(logits, self.answers)
        if not torch.isfinite(m).all():
            raise InterpError("the metric returned NaN or infinite values")
        return m

    def clean_acts(self, sites: Sequence[Site], corrupted: bool = False) -> dict[Site, torch.Tensor]:
        """Full padded activations [batch, seq, ...] of the clean (or corrupted) batch at sites."""
        cache: dict[Site, torch.Tensor] = {}

        def keep(site):
            def fn(x):
                cache[site] = x.detach().clone()
            return fn

        with self.model.hooks({s: keep(s) for s in sites}), torch.no_grad():
            self.model.hf.base_model(**(self.corr if corrupted else self.clean), use_cache=False)
        return cache

    def effect(self, hooks: dict, grad: bool = False) -> torch.Tensor:
        """Normalized effect per pair of running the corrupted batch under ``hooks``."""
        with self.model.hooks(hooks), torch.set_grad_enabled(grad):
            m = self._metric(self.model.last_logits(self.corr) if not grad else self._logits_grad())
        return (m - self.m_corr) / self.gap

    def _logits_grad(self) -> torch.Tensor:
        h = self.model.hf.base_model(**self.corr, use_cache=False).last_hidden_state
        return self.model._unembed(h[:, -1])


def _replace_at(position: int, value: torch.Tensor, head: int | None = None):
    def fn(x):
        x = x.clone()
        if head is None:
            x[:, position] = value[:, position]
        else:
            x[:, position, head] = value[:, position, head]
        return x
    return fn


def patching_sweep(model, task: PatchTask, sites: Sequence[str] = ("resid_pre", "attn_out", "mlp_out"),
                   layers: Sequence[int] | None = None, positions: Sequence[int] | None = None,
                   metric: Metric = logit_diff, progress: bool = True) -> dict:
    """Normalized effect of patching each (site, layer, position) from clean into corrupted.

    Positions count from the end (−1 = last token). ``attn_z`` is patched
    head by head at every position at once. Returns {site: [layers][positions
    or heads]} plus the baseline metrics.
    """
    runner = _Runner(model, task, metric)
    layers = list(range(model.n_layers)) if layers is None else list(layers)
    positions = list(range(-runner.min_len, 0)) if positions is None else list(positions)
    if any(not -runner.min_len <= p < 0 for p in positions):
        raise InterpError(f"positions must be negative (from the end) and within the shortest prompt "
                          f"({runner.min_len} tokens)")
    out: dict = {"positions": positions, "layers": layers, "clean_metric": runner.m_clean.mean().item(),
                 "corrupted_metric": runner.m_corr.mean().item(), "effects": {}}
    for name in sites:
        site_list = [parse_site((name, layer), model.n_layers) for layer in layers]
        clean = runner.clean_acts(site_list)
        grid = []
        for site in tqdm(site_list, desc=f"sweep {name}", disable=not progress):
            if name == "attn_z":
                row = []
                for head in range(model.n_heads):
                    def fn(x, head=head, value=clean[site]):
                        x = x.clone()
                        x[..., head, :] = value[..., head, :]
                        return x
                    row.append(runner.effect({site: fn}).mean().item())
            else:
                row = [runner.effect({site: _replace_at(p, clean[site])}).mean().item() for p in positions]
            grid.append(row)
        out["effects"][name] = grid
    return out


def _patch_along(p: torch.Tensor, position: int, source: torch.Tensor):
    """w ← w + p pᵀ(u − w) at one position (p need not be unit)."""
    def fn(x):
        x = x.clone()
        w = x[:, position]
        coef = (source[:, position].to(w.dtype) - w) @ p.to(w.dtype)
        x[:, position] = w + coef[:, None] * p.to(w.dtype)
        return x
    return fn


def learn_das(model, task: PatchTask, site: str, position: int = -1, steps: int = 60, lr: float = 1e-2,
              seed: int = 0, metric: Metric = logit_diff, progress: bool = True) -> torch.Tensor:
    """A unit direction at ``site`` (one layer) whose 1-D patch moves corrupted runs to the clean answer."""
    s = parse_site(site, model.n_layers)
    runner = _Runner(model, task, metric)
    source = runner.clean_acts([s])[s]
    d = model.site_shape(s)[-1]
    if model.site_shape(s) != (d,):
        raise InterpError(f"DAS here learns one vector; {s} has shape {model.site_shape(s)}")
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
            loss = -runner.effect({s: _patch_along(v, position, source)}, grad=True).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        for p in frozen:
            p.requires_grad_(True)
    return (raw / raw.norm()).detach()


def direction_effect(model, task: PatchTask, site: str, p: torch.Tensor | None, position: int = -1,
                     metric: Metric = logit_diff) -> float:
    """Normalized effect of the patch along ``p`` (or the full component when None) at one position."""
    s = parse_site(site, model.n_layers)
    runner = _Runner(model, task, metric)
    source = runner.clean_acts([s])[s]
    fn = _replace_at(position, source) if p is None else _patch_along(p.to(model.device).float(), position, source)
    return runner.effect({s: fn}).mean().item()


def mean_difference_direction(model, task: PatchTask, site: str, position: int = -1) -> torch.Tensor:
    """Unit vector along mean(clean) − mean(corrupted) at one site and position."""
    s = parse_site(site, model.n_layers)
    runner = _Runner(model, task)
    clean = runner.clean_acts([s])[s][:, position]
    other = runner.clean_acts([s], corrupted=True)[s][:, position]
    d = (clean - other).mean(0)
    return d / d.norm()


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
    from .arch import _get

    s = parse_site(site, model.n_layers)
    if s.name == "mlp_act":
        w = _get(model._layers[s.layer], model._layout.mlp_down).weight.detach()
        return w.T if model.architecture == "gpt2" else w  # [d_model, d_mlp]
    if readout is None:
        raise InterpError(f"{s} has no down projection; name a read-out for the rowspace split: "
                          "'q.LAYER:HEAD,HEAD', 'answers' or 'unembed'")
    if readout == "unembed":
        return model.hf.get_output_embeddings().weight.detach()
    if readout == "answers":
        if task is None:
            raise InterpError("readout='answers' needs the task")
        ids = torch.unique(task.answers.flatten())
        return model.hf.get_output_embeddings().weight.detach()[ids.to(model.device)]
    if readout.startswith("q."):
        try:
            layer_s, heads_s = readout[2:].split(":")
            layer, heads = int(layer_s), [int(h) for h in heads_s.split(",")]
        except ValueError:
            raise InterpError(f"read-out {readout!r} should look like 'q.20:3,7'") from None
        if not 0 <= layer < model.n_layers or any(not 0 <= h < model.n_heads for h in heads):
            raise InterpError(f"read-out {readout!r}: layers are 0..{model.n_layers - 1}, "
                              f"heads 0..{model.n_heads - 1}")
        if s.name not in ("resid_pre", "resid_mid", "resid_post") or layer < s.layer + (s.name != "resid_pre"):
            raise InterpError(f"read-out {readout!r} must read the residual stream at or after {s}")
        block = model._layers[layer]
        wq = _get(block, model._layout.attn_q).weight.detach()
        if model.architecture == "gpt2":  # Conv1D [d_in, 3·d_model]: queries are the first d_model outputs
            wq = wq[:, : model.d_model].T
        gain = _get(block, model._layout.attn_in_norm).weight.detach()
        if model.architecture.startswith("gemma"):
            gain = gain + 1  # Gemma's RMSNorm scales by (1 + weight)
        rows = torch.cat([wq[h * model.d_head:(h + 1) * model.d_head] for h in heads])
        return rows * gain[None, :]
    raise InterpError(f"unknown read-out {readout!r}; use 'q.LAYER:HEAD,HEAD', 'answers' or 'unembed'")


def check_subspace(model, task: PatchTask, site: str, v: torch.Tensor, position: int = -1,
                   readout: str | None = None, metric: Metric = logit_diff):
    """Illusion checks for direction ``v`` at ``site``: see ``interp.analyzers.illusion``."""
    from .analyzers.illusion import illusion_checks

    s = parse_site(site, model.n_layers)
    if v.numel() != model.site_shape(s)[-1]:
        raise InterpError(f"direction of size {v.numel()} does not match {s} of size {model.site_shape(s)[-1]}")
    reader = reader_matrix(model, site, readout, task)
    runner = _Runner(model, task, metric)
    acts = torch.cat([runner.clean_acts([s])[s][:, position],
                      runner.clean_acts([s], corrupted=True)[s][:, position]])

    def effect(p):
        return direction_effect(model, task, site, None if p is None else p.float(), position, metric)

    return illusion_checks(effect, v, reader.float(), acts.float())


def run_patching(model, task: PatchTask, out_dir: str | Path | None = None,
                 positions: Sequence[int] = (-1, -2, -3, -4, -5), mlp_layer: int | None = None,
                 resid_layer: int | None = None, readout: str | None = None, das_steps: int = 60,
                 seed: int = 0, progress: bool = True) -> dict:
    """Sweep, then DAS in an MLP hidden layer and in the residual stream at the last position, with checks.

    Layer choices follow the paper's IOI set-up (a residual direction that
    carries the signal into the heads that write the answer, and the MLP of
    that same block). Unless given:

    - the reader layer N is the one whose ``attn_out`` patch at the last
      position matters most (in IOI: the name movers);
    - the residual layer is the first up to N whose ``resid_pre`` patch at
      the last position reaches half of that at N (the signal has arrived,
      and the heads that act on it come later);
    - the MLP layer is that same layer;
    - the residual read-out is the query projections of the three heads of
      layer N whose own (``attn_z``) patches matter most.

    DAS trains on half the pairs; every fraction of effect is measured on the
    other half.
    """
    n = len(task.clean)
    if n < 4:
        raise InterpError(f"need at least 4 prompt pairs (half to train DAS, half to test), got {n}")
    sweep = patching_sweep(model, task, ("resid_pre", "attn_out", "mlp_out"), positions=positions, progress=progress)
    if task.roles:
        sweep["roles"] = {str(p): r for r, p in task.roles.items() if p in sweep["positions"]}
    last = sweep["positions"].index(-1) if -1 in sweep["positions"] else 0
    resid_end = [row[last] for row in sweep["effects"]["resid_pre"]]
    attn_end = [row[last] for row in sweep["effects"]["attn_out"]]
    reader_layer = max(range(1, model.n_layers), key=lambda i: attn_end[i])
    if resid_layer is None:
        at_reader = resid_end[reader_layer]
        resid_layer = next((i for i in range(1, reader_layer) if at_reader > 0 and resid_end[i] >= 0.5 * at_reader),
                           reader_layer)
    mlp_layer = resid_layer if mlp_layer is None else mlp_layer
    heads = None
    if readout is None:
        if reader_layer < resid_layer:  # the user put the residual site after it: use the strongest later layer
            reader_layer = max(range(resid_layer, model.n_layers), key=lambda i: attn_end[i])
        heads = patching_sweep(model, task, ("attn_z",), layers=[reader_layer], progress=False)["effects"]["attn_z"][0]
        top3 = sorted(range(model.n_heads), key=lambda h: -heads[h])[:3]
        readout = f"q.{reader_layer}:{','.join(map(str, sorted(top3)))}"
    order = list(range(n))
    random.Random(seed).shuffle(order)
    train, test = task.subset(order[: n // 2]), task.subset(order[n // 2:])
    results = {}
    for key, site, reader in (("mlp", f"mlp_act.{mlp_layer}", None), ("resid", f"resid_pre.{resid_layer}", readout)):
        v = learn_das(model, train, site, -1, steps=das_steps, seed=seed, progress=progress)
        report = check_subspace(model, test, site, v, -1, reader)
        md = mean_difference_direction(model, train, site)
        results[key] = {"site": site, "reader": "down projection" if reader is None else reader,
                        **report.to_dict(),
                        "das_effect_train": direction_effect(model, train, site, v),
                        "mean_difference_effect": direction_effect(model, test, site, md),
                        "cos_das_mean_difference": float(torch.nn.functional.cosine_similarity(
                            v.double(), md.double().to(v.device), dim=0))}
    report = {"model": model.describe(), "n_pairs": n, "sweep": sweep, "subspaces": results,
              "fraction_of_effect": results["mlp"]["fraction_of_effect"], "verdict": results["mlp"]["verdict"]}
    if heads is not None:
        report["reader_heads"] = {"layer": reader_layer, "attn_z_effects": heads}
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(json.dumps(report, indent=1))
        _write_html(report, out / "report.html")
    return report


def _write_html(report: dict, path: Path) -> None:
    import plotly.graph_objects as go

    from .plots import write_html

    figs = []
    sweep = report["sweep"]
    for name, grid in sweep["effects"].items():
        roles = sweep.get("roles", {})
        labels = [f"{p} ({roles[str(p)]})" if str(p) in roles else str(p) for p in sweep["positions"]]
        fig = go.Figure(go.Heatmap(z=grid, x=labels, y=sweep["layers"],
                                   colorscale="RdBu", zmid=0, colorbar={"title": "effect"}))
        fig.update_layout(title=f"patching {name} from clean into corrupted (1 = clean behaviour)",
                          xaxis_title="position (from the end)", yaxis_title="layer", template="plotly_white")
        figs.append(fig)
    bars = go.Figure()
    for key, r in report["subspaces"].items():
        f = r["fraction_of_effect"]
        bars.add_trace(go.Bar(name=r["site"], x=list(f), y=list(f.values())))
    bars.update_layout(title="fraction of effect: full component, DAS direction, its rowspace and nullspace parts",
                       barmode="group", template="plotly_white")
    figs.append(bars)
    intro = " | ".join(f"{r['site']}: {r['verdict']}" for r in report["subspaces"].values())
    write_html(figs, path, title=f"Patching and illusion checks: {report['model']['model']}", intro=intro)
