"""``interp bench demo``: where the refusal demo spends its time, stage by stage.

Runs the refusal experiment (``interp.experiments.refusal.run``, what ``make
demo`` runs) once and reads the wall time of each of its stages from the
experiment's own ``Stopwatch`` (``report["timing"]``): prompt split and
filter, candidate capture, scorer set-up, selection (the search) and the
held-out evaluation, each with its share of the whole. Model loading is timed
apart and not part of the shares.

Example:
    r = bench_demo("smollm2-135m-instruct", {"n_train": 16, "n_val": 8, "n_eval": 8, "max_new_tokens": 16})
    r["stages_s"], r["share"]
"""
from __future__ import annotations

import time


def bench_demo(model_name: str, config: dict | None = None, out: str | None = None, progress: bool = False,
               dtype: str = "float32") -> dict:
    """Stage times of one refusal run; ``config`` holds ``refusal.Config`` fields (the demo's defaults otherwise);
    ``dtype`` as ``interp.loading.resolve_dtype`` takes it ("auto": bfloat16 where native)."""
    from ..experiments import refusal
    from ..loading import load_model, resolve_dtype

    t0 = time.perf_counter()
    model = load_model(model_name, progress=progress, dtype=resolve_dtype(dtype))
    load_s = time.perf_counter() - t0
    cfg = refusal.Config(**(config or {}))
    result = refusal.run(model, cfg, out, progress=progress)
    timing = dict(result.report["timing"])
    total = float(timing.pop("total_s"))
    parts = {k[len("evaluation_"):-2]: float(timing.pop(k)) for k in list(timing) if k.startswith("evaluation_")}
    stages = {k[:-2] if k.endswith("_s") else k: float(v) for k, v in timing.items()}
    other = total - sum(stages.values())
    if other > 0.05:  # report building, figures, writing files
        stages["other"] = round(other, 1)
    ev = result.report["evaluation"]
    return {"model": model_name, "dtype": result.report["model"]["dtype"], "config": {k: v for k, v in result.report["config"].items() if v is not None},
            "load_s": round(load_s, 1), "total_s": round(total, 1), "stages_s": stages,
            "share": {k: round(v / total, 3) if total > 0 else None for k, v in stages.items()},
            "evaluation_parts_s": parts,
            "chosen": [result.layer, result.position],
            "evaluation": {k: ev[k] for k in ("baseline_refusal", "ablated_refusal", "minus_r_refusal",
                                              "baseline_harmless_refusal", "induced_refusal", "ce_delta")}}


def print_table(r: dict) -> None:
    print(f"refusal run on {r['model']} ({r.get('dtype', 'float32')}): {r['total_s']:.1f} s (model load {r['load_s']:.1f} s, not counted)")
    print(f"  {'stage':<14}{'wall s':>9}{'share':>8}")
    for k, v in r["stages_s"].items():
        print(f"  {k:<14}{v:>9.1f}{r['share'][k]:>8.1%}")
        if k == "evaluation":
            for part, sec in r.get("evaluation_parts_s", {}).items():
                print(f"    {part:<12}{sec:>9.1f}")
    print(f"  chosen layer {r['chosen'][0]}, position {r['chosen'][1]}; held-out: "
          + ", ".join(f"{k} {v:.3f}" for k, v in r["evaluation"].items()))
