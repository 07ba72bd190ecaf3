"""``interp separation``: how well two prompt sets separate, layer by layer.

Captures the residual stream at the last prompt token for two prompt files
(by default the harmful and harmless demo requests in data/) and reports
cross-validated probe accuracy and d' per layer.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

REPO_DATA = Path(__file__).resolve().parents[2] / "data"


def add_parser(sub) -> None:
    p = sub.add_parser("separation", help="per-layer separation of two prompt sets",
                       description="Capture resid_post at the last prompt token for two prompt sets and report "
                       "their per-layer separation (cross-validated probe accuracy and d').")
    p.add_argument("--model", default=None, help="model (default: the packaged default model)")
    p.add_argument("--a", default=str(REPO_DATA / "demo_harmful.txt"), help="first prompt file (default: "
                   "data/demo_harmful.txt)")
    p.add_argument("--b", default=str(REPO_DATA / "demo_harmless.txt"), help="second prompt file (default: "
                   "data/demo_harmless.txt)")
    p.add_argument("--out", default="reports/separation", help="report folder (default reports/separation)")
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds (default 5)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..analyzers.separation import layer_separation
    from ..data.prompts import read_prompt_file as read_lines
    from ..loading import load_model
    from ..packaged import DEFAULT_MODEL
    from ..plots import layer_lines, write_html

    t0 = time.time()
    a, b = read_lines(args.a), read_lines(args.b)
    model = load_model(args.model or DEFAULT_MODEL)
    print(f"{model}: {len(a)} + {len(b)} prompts")
    acts_a = model.capture(a, "resid_post", "last")
    acts_b = model.capture(b, "resid_post", "last")
    rows = layer_separation(acts_a.stack("resid_post")[:, :, 0], acts_b.stack("resid_post")[:, :, 0],
                            folds=args.folds)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    best = max(rows, key=lambda r: (r["cv_accuracy"], r["dprime"]))
    report = {"model": model.describe(), "site": "resid_post", "position": "last",
              "sets": {"a": args.a, "b": args.b, "n_a": len(a), "n_b": len(b)}, "folds": args.folds,
              "per_layer": rows, "best_layer": best["layer"], "seconds": round(time.time() - t0, 1)}
    (out / "report.json").write_text(json.dumps(report, indent=1))
    fig_acc = layer_lines({"cv accuracy": [r["cv_accuracy"] for r in rows]},
                          title="Probe accuracy per layer (resid_post, last token)", yaxis="accuracy")
    fig_d = layer_lines({"d'": [r["dprime"] for r in rows]}, title="d' along the difference of means",
                        yaxis="d'")
    write_html([fig_acc, fig_d], out / "report.html", title=f"Separation per layer: {model.name}",
               intro=f"{Path(args.a).name} vs {Path(args.b).name}")
    print("layer  cv_acc    d'")
    for r in rows:
        print(f"{r['layer']:>5}  {r['cv_accuracy']:.3f}  {r['dprime']:6.2f}")
    print(f"best layer {best['layer']}: accuracy {best['cv_accuracy']:.3f}, d' {best['dprime']:.2f}")
    print(f"report: {out / 'report.json'} and {out / 'report.html'} ({report['seconds']} s)")
    return 0
