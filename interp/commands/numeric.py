"""``interp numeric``: where an entity attribute lives (PLS per layer) and whether moving along it flips answers.

Parses arguments, validates the attribute, layers and α before the model loads, and calls
``interp.experiments.numeric.run``.
"""
from __future__ import annotations


def add_parser(sub) -> None:
    from ..data.entities import ATTRIBUTES

    p = sub.add_parser("numeric", help="PLS numeric subspaces of entity attributes and the Yes/No flip test",
                       description="Keep the entities whose attribute the model recalls, fit StandardScaler + PLS "
                       "from the residual stream at the entity's last token to the value per layer (entity-held-out "
                       "R² beside ridge, PCA + linear and shuffled-target baselines), then add the PLS direction at "
                       "the second entity of comparison prompts and count Yes/No flips against random directions. "
                       "Writes report.json and report.html.")
    p.add_argument("model", metavar="MODEL", help="packaged model name, .gguf file, local folder or hub id")
    p.add_argument("--attribute", required=True, choices=sorted(ATTRIBUTES), help="which attribute")
    p.add_argument("--out", required=True, help="output folder for report.json and report.html")
    p.add_argument("--max-entities", type=int, default=300, help="entities read from the table (default 300)")
    p.add_argument("--tolerance", type=float, default=None,
                   help="recall tolerance in target units (default per attribute: 10 years, 5 degrees latitude, "
                   "0.5 in log10 for populations and areas, ...)")
    p.add_argument("--no-filter", action="store_true", help="probe every entity, not only the recalled ones")
    p.add_argument("--layers", nargs="+", default=["all"],
                   help="layers to probe: 'all' or indices, space-separated (default all)")
    p.add_argument("--flip-layers", nargs="+", default=None,
                   help="layers for the flip test, space-separated (default: 5 layers spread from depth/8 to 3/4 "
                   "depth)")
    p.add_argument("--alphas", nargs="+", default=["0.25", "0.5", "1", "2"],
                   help="push sizes in units of the layer's mean residual norm, space-separated "
                   "(default 0.25 0.5 1 2)")
    p.add_argument("--pairs", type=int, default=64, help="comparison prompts, half Yes and half No (default 64)")
    p.add_argument("--seeds", type=int, default=3, help="random control directions (default 3)")
    p.add_argument("--components", type=int, default=5, help="PLS components (default 5, as in the paper)")
    p.add_argument("--folds", type=int, default=5, help="entity-held-out folds (default 5)")
    p.add_argument("--batch-size", type=int, default=16, help="prompts per forward pass (default 16)")
    p.add_argument("--seed", type=int, default=0,
                   help="random seed for folds, prompts and random directions (default 0)")
    p.set_defaults(func=run)


def _numbers(values, flag: str, kind=float) -> list:
    from ..errors import InterpError
    from .rank import split_list

    items = split_list(values)
    try:
        return [kind(x) for x in items]
    except ValueError:
        raise InterpError(f"{flag} takes {'integers' if kind is int else 'numbers'}, space-separated; got "
                          f"{' '.join(items)!r}") from None


def config_from_args(args, n_layers: int | None = None):
    """The experiment's ``Config`` from parsed arguments, validated (against ``n_layers`` when known)."""
    from ..experiments.numeric import Config, check_config
    from .rank import split_list

    layers = None if split_list(args.layers) == ["all"] else _numbers(args.layers, "--layers", int)
    flip = None if args.flip_layers is None else _numbers(args.flip_layers, "--flip-layers", int)
    cfg = Config(attribute=args.attribute, max_entities=args.max_entities, tolerance=args.tolerance,
                 filter_known=not args.no_filter, layers=layers, flip_layers=flip,
                 alphas=_numbers(args.alphas, "--alphas"), n_pairs=args.pairs, n_random=args.seeds,
                 n_components=args.components, n_splits=args.folds, batch_size=args.batch_size, seed=args.seed)
    return check_config(cfg, n_layers)


def run(args) -> int:
    from ..experiments import numeric
    from ..loading import load_model
    from .rank import known_n_layers

    config = config_from_args(args, known_n_layers(args.model))  # bad layers or α fail before the model loads
    model = load_model(args.model)
    report = numeric.run(model, config, args.out).report
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
