"""``interp numeric``: where an entity attribute lives (PLS per layer) and whether moving along it flips answers."""
from __future__ import annotations


def _ints(text: str | None) -> list[int] | None:
    if text is None or text == "all":
        return None
    return [int(x) for x in text.split(",") if x.strip()]


def add_parser(sub) -> None:
    from ..numeric_experiment import ATTRIBUTES

    p = sub.add_parser("numeric", help="PLS numeric subspaces of entity attributes and the Yes/No flip test",
                       description="Keep the entities whose attribute the model recalls, fit StandardScaler + PLS "
                       "from the residual stream at the entity's last token to the value per layer (entity-held-out "
                       "R² beside ridge, PCA + linear and shuffled-target baselines), then add the PLS direction at "
                       "the second entity of comparison prompts and count Yes/No flips against random directions. "
                       "Writes report.json and report.html.")
    p.add_argument("model", help="packaged model name, .gguf file, local folder or hub id")
    p.add_argument("--attribute", required=True, choices=sorted(ATTRIBUTES), help="which attribute")
    p.add_argument("--out", required=True, help="output folder for report.json and report.html")
    p.add_argument("--max-entities", type=int, default=300, help="entities read from the table (default 300)")
    p.add_argument("--tolerance", type=float, default=None,
                   help="recall tolerance in target units (default per attribute: 10 years, 5 degrees latitude, "
                   "0.5 in log10 for populations and areas, ...)")
    p.add_argument("--no-filter", action="store_true", help="probe every entity, not only the recalled ones")
    p.add_argument("--layers", default="all", help="layers to probe: 'all' or comma-separated indices")
    p.add_argument("--flip-layers", default=None,
                   help="comma-separated layers for the flip test (default: 5 layers spread from depth/8 to 3/4 depth)")
    p.add_argument("--alphas", default="0.25,0.5,1,2",
                   help="push sizes in units of the layer's mean residual norm (default 0.25,0.5,1,2)")
    p.add_argument("--pairs", type=int, default=64, help="comparison prompts, half Yes and half No (default 64)")
    p.add_argument("--seeds", type=int, default=3, help="random control directions (default 3)")
    p.add_argument("--components", type=int, default=5, help="PLS components (default 5, as in the paper)")
    p.add_argument("--folds", type=int, default=5, help="entity-held-out folds (default 5)")
    p.add_argument("--batch-size", type=int, default=16, help="prompts per forward pass (default 16)")
    p.add_argument("--seed", type=int, default=0, help="random seed for folds, prompts and random directions (default 0)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..loading import load_model
    from ..numeric_experiment import run_numeric

    model = load_model(args.model)
    report = run_numeric(model, args.attribute, args.out, max_entities=args.max_entities, tolerance=args.tolerance,
                         filter_known=not args.no_filter, layers=_ints(args.layers),
                         flip_layers=_ints(args.flip_layers), alphas=[float(a) for a in args.alphas.split(",")],
                         n_pairs=args.pairs, n_random=args.seeds, n_components=args.components,
                         n_splits=args.folds, batch_size=args.batch_size, seed=args.seed)
    if "recall" in report:
        r = report["recall"]
        print(f"recall: {r['n_known']}/{r['n_entities']} entities within ±{r['tolerance']} "
              f"({r['n_unparsed']} replies without a number)")
    print("layer  " + " ".join(f"{layer:>6}" for layer in report["layers"]))
    print("PLS R² " + " ".join(f"{v:6.3f}" for v in report["pls_r2"]))
    for name, vals in report["baselines"].items():
        print(f"{name[:6]:<6} " + " ".join(f"{v:6.3f}" for v in vals))
    f = report["flip"]
    print(f"baseline accuracy {f['baseline_accuracy']:.3f} (Yes rate {f['baseline_yes_rate']:.2f}) on {f['n_pairs']} "
          f"comparison prompts")
    print(f"best flip: layer {report['best_flip_layer']}, alpha {report['best_flip_alpha']}: PLS "
          f"{report['flip_rate_pls']:.3f} vs random {report['flip_rate_random']:.3f}")
    print(f"wrote {args.out}/report.json and report.html")
    return 0
