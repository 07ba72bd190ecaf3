"""``interp bench patching``: the IOI patching sweep, one forward per patch against stacked patches.

The sweep ``interp patch`` runs (``interp.experiments.patching.run``): the
validation pairs of the IOI task (``ioi_splits`` of ``pairs`` pairs), the
positions counted from the end, here at ``layers`` and ``sites`` (``attn_z``
head by head). Timed side by side in one process, alternating (per_patch,
stacked, per_patch, stacked, ...) so load on a shared machine hits both
alike, median of ``reps``; building ``Pairs`` (two forwards) is the warm-up:

- ``per_patch``: one forward of the corrupted batch per (site, layer,
  position or head), a ``Pairs.effect`` each: the sweep before it was batched;
- ``stacked``: ``sweep_pairs``: (patch, pair) rows, at most ``batch_rows``
  per forward, run from the patched layer (and, for positions, the first
  patched token) on.

``ratio`` is per_patch / stacked seconds (above 1: the stacked sweep is
faster); ``max_abs_diff`` is the largest difference of the two sweeps' effects.

Example:
    r = bench_patching("qwen2.5-coder-0.5b-instruct", layers=[0, 12], reps=3)
    r["ratio"], r["max_abs_diff"]
"""
from __future__ import annotations

import statistics
import time
from typing import Sequence

SITES = ("resid_pre", "attn_out", "mlp_out", "attn_z")


def per_patch_sweep(pairs, sites: Sequence[str], layers: Sequence[int], positions: Sequence[int]) -> dict:
    """{site: [layers][positions or heads]} with one ``Pairs.effect`` (one forward) per patch."""
    from ..interventions import Patch

    out = {}
    for name in sites:
        names = [f"{name}.{layer}" for layer in layers]
        cache = pairs.cache(names)
        out[name] = [[pairs.effect({s: Patch(cache, s, positions="prompt", heads=[h])}).mean().item()
                      for h in range(pairs.model.n_heads)] if name == "attn_z" else
                     [pairs.effect({s: Patch(cache, s, positions=[p])}).mean().item() for p in positions]
                     for s in names]
    return out


def bench_patching(model_name, layers: Sequence[int] | None = (0, 1, 2, 3, 4, 5), sites: Sequence[str] = SITES,
                   positions: Sequence[int] = (-1, -2, -3, -4, -5), pairs: int = 32, reps: int = 3,
                   batch_rows: int = 256, seed: int = 0, progress: bool = True) -> dict:
    """Seconds of the per-patch and the stacked sweep, their ratio and largest difference (module docstring).

    ``model_name`` may also be a loaded ``Model``; ``layers=None`` sweeps every layer.
    """
    from ..data.ioi import ioi_splits
    from ..experiments._patching import Pairs, sweep_pairs
    from ..loading import load_model

    model = load_model(model_name, progress=progress) if isinstance(model_name, str) else model_name
    tasks, _ = ioi_splits(model, n=pairs, seed=seed)
    val = Pairs(model, tasks["val"])
    layers = list(range(model.n_layers)) if layers is None else list(layers)
    sites, positions = list(sites), list(positions)
    times: dict[str, list[float]] = {"per_patch": [], "stacked": []}
    for rep in range(reps):
        t = time.perf_counter()
        old = per_patch_sweep(val, sites, layers, positions)
        times["per_patch"].append(time.perf_counter() - t)
        t = time.perf_counter()
        new = sweep_pairs(val, sites, layers, positions, progress=False, batch_rows=batch_rows)["effects"]
        times["stacked"].append(time.perf_counter() - t)
        if progress:
            print(f"rep {rep + 1}/{reps}: per_patch {times['per_patch'][-1]:.1f} s, "
                  f"stacked {times['stacked'][-1]:.1f} s", flush=True)
    diff = max(abs(a - b) for s in sites for ra, rb in zip(old[s], new[s]) for a, b in zip(ra, rb))
    med = {k: statistics.median(v) for k, v in times.items()}
    n_patches = sum(len(layers) * (model.n_heads if s == "attn_z" else len(positions)) for s in sites)
    return {"model": getattr(model, "name", str(model_name)), "pairs": len(tasks["val"].clean), "layers": layers,
            "sites": sites, "positions": positions, "patches": n_patches, "batch_rows": batch_rows, "reps": reps,
            "seconds": med, "all_seconds": times, "ratio": med["per_patch"] / med["stacked"], "max_abs_diff": diff}


def print_table(r: dict) -> None:
    print(f"patching sweep on {r['model']}: {r['pairs']} validation pairs, layers {r['layers']}, sites "
          f"{' '.join(r['sites'])}, positions {r['positions']} ({r['patches']} patches); median of {r['reps']}")
    print(f"  one forward per patch   {r['seconds']['per_patch']:8.1f} s")
    print(f"  stacked (batch_rows {r['batch_rows']}) {r['seconds']['stacked']:8.1f} s")
    print(f"  ratio {r['ratio']:.2f}x   largest |effect difference| {r['max_abs_diff']:.2e}")
