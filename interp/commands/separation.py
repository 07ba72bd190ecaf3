"""``interp separation``: how well two prompt sets separate, layer by layer.

Parses arguments, reads and checks both prompt files before the model loads, and calls
``interp.experiments.separation.run`` (cross-validated probe accuracy and d' per layer).
"""
from __future__ import annotations

from pathlib import Path

REPO_DATA = Path(__file__).resolve().parents[2] / "data"  # the same defaults as experiments.separation.Config


def add_parser(sub) -> None:
    p = sub.add_parser("separation", help="per-layer separation of two prompt sets",
                       description="Capture resid_post at the last prompt token for two prompt sets and report "
                       "their per-layer separation (cross-validated probe accuracy and d').")
    p.add_argument("model", metavar="MODEL", nargs="?", default=None,
                   help="packaged model name, .gguf file, local folder or hub id (default: the packaged default model)")
    p.add_argument("--model", dest="model_option", metavar="MODEL", default=None,
                   help="the same as MODEL (older form)")
    p.add_argument("--a", default=str(REPO_DATA / "demo_harmful.txt"),
                   help="first prompt file (default: data/demo_harmful.txt)")
    p.add_argument("--b", default=str(REPO_DATA / "demo_harmless.txt"),
                   help="second prompt file (default: data/demo_harmless.txt)")
    p.add_argument("--out", default="reports/separation", help="report folder (default reports/separation)")
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds (default 5)")
    p.add_argument("--site", default="resid_post", help="site read at every layer (default resid_post)")
    p.add_argument("--position", default="last", help="token position read (default last)")
    p.add_argument("--seed", type=int, default=0, help="seed of the folds and the train/validation/test split")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..errors import InterpError
    from ..experiments.separation import Config, check_config
    from ..experiments.separation import run as run_separation
    from ..loading import load_model
    from ..packaged import DEFAULT_MODEL

    if args.model and args.model_option and args.model != args.model_option:
        raise InterpError(f"two models given ({args.model} and --model {args.model_option}); give one")
    cfg = Config(a=args.a, b=args.b, site=args.site, position=args.position, folds=args.folds,
                 seed=args.seed)
    a, b = check_config(cfg)  # before the model loads
    model = load_model(args.model or args.model_option or DEFAULT_MODEL)
    print(f"{model}: {len(a)} + {len(b)} prompts")
    result = run_separation(model, cfg, out=args.out)
    rows, best = result.report["per_layer"], result.report["per_layer"][result.report["best_layer"]]
    print("layer  cv_acc    d'")
    for r in rows:
        print(f"{r['layer']:>5}  {r['cv_accuracy']:.3f}  {r['dprime']:6.2f}")
    print(f"best layer {best['layer']} (chosen on validation): test accuracy {result.report['test_accuracy']:.3f} "
          f"(cross-validated over all prompts {best['cv_accuracy']:.3f}, d' {best['dprime']:.2f})")
    print(f"report: {args.out}/report.json and {args.out}/report.html ({result.report['seconds']} s)")
    return 0
