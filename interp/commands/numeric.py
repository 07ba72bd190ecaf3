"""``interp numeric``: where an entity attribute lives (PLS per layer) and whether moving along it flips answers.

Parses arguments, validates the attribute, layers and α before the model loads, and calls
``interp.experiments.numeric.run``.
"""
from __future__ import annotations

from ._args import add_dtype_argument


def add_parser(sub) -> None:
    from ..data.entities import ATTRIBUTES

    p = sub.add_parser("numeric", help="PLS numeric subspaces of entity attributes and the Yes/No flip test",
                       description="Keep the entities whose attribute the model recalls, fit StandardScaler + PLS "
                       "from the residual stream at the entity's last token to the value per layer (entity-held-out "
                       "R² beside ridge, PCA + linear and shuffled-target baselines), then add the PLS direction at "
                       "the second entity of comparison prompts and count Yes/No flips against random directions. "
                       "Entities are split train/validation/test; the layers are chosen on validation and the "
                       "reported numbers read on test. Writes report.json and report.html.")
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
    p.add_argument("--alphas", nargs="+", default=None,
                   help="absolute sizes α of the edit α·u (u a unit vector), space-separated; a prompt flips when "
                   "its answer changes at any α (default: the paper's sweep, -30 to 28.5 in steps of 1.5)")
    p.add_argument("--pairs", type=int, default=64,
                   help="comparison prompts per split (validation, test), half Yes and half No (default 64)")
    p.add_argument("--random", type=int, default=3, help="random control directions (default 3)")
    p.add_argument("--no-flip", action="store_true", help="recall filter and probing only, no flip test")
    p.add_argument("--components", type=int, default=5, help="PLS components (default 5, as in the paper)")
    p.add_argument("--fractions", nargs=3, type=float, default=[0.6, 0.2, 0.2], metavar=("TRAIN", "VAL", "TEST"),
                   help="shares of the entities for train, validation and test (default 0.6 0.2 0.2)")
    p.add_argument("--batch-size", type=int, default=16, help="prompts per forward pass (default 16)")
    add_dtype_argument(p)
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the entity split, prompts and random directions (default 0)")
    p.add_argument("--seeds", nargs="+", type=int, default=None,
                   help="repeat split, fit and flip test per seed and report mean ± spread, e.g. --seeds 0 1 2")
    p.set_defaults(func=run)


def _numbers(values, flag: str, kind=float) -> list:
    from ..errors import InterpError
    from ._args import split_list

    items = split_list(values)
    try:
        return [kind(x) for x in items]
    except ValueError:
        raise InterpError(f"{flag} takes {'integers' if kind is int else 'numbers'}, space-separated; got "
                          f"{' '.join(items)!r}") from None


def config_from_args(args, n_layers: int | None = None):
    """The experiment's ``Config`` from parsed arguments, validated (against ``n_layers`` when known)."""
    from ..experiments.numeric import Config, check_config
    from ._args import split_list

    layers = None if split_list(args.layers) == ["all"] else _numbers(args.layers, "--layers", int)
    flip = None if args.flip_layers is None else _numbers(args.flip_layers, "--flip-layers", int)
    alphas = {} if args.alphas is None else {"alphas": _numbers(args.alphas, "--alphas")}
    cfg = Config(attribute=args.attribute, max_entities=args.max_entities, tolerance=args.tolerance,
                 filter_known=not args.no_filter, layers=layers, flip_layers=flip, n_pairs=args.pairs,
                 n_random=args.random, run_flip=not args.no_flip, n_components=args.components,
                 fractions=tuple(args.fractions), batch_size=args.batch_size, seed=args.seed, seeds=args.seeds,
                 **alphas)
    return check_config(cfg, n_layers)


def run(args) -> int:
    from ..experiments import numeric
    from ..loading import load_model, resolve_dtype
    from ._args import known_n_layers

    config = config_from_args(args, known_n_layers(args.model))  # bad layers or α fail before the model loads
    model = load_model(args.model, dtype=resolve_dtype(args.dtype))
    result = numeric.run(model, config, args.out)
    report = result.report
    if "recall" in report:
        r = report["recall"]
        print(f"recall: {r['n_known']}/{r['n_entities']} entities within ±{r['tolerance']} "
              f"({r['n_unparsed']} replies without a number)")
    print("layer          " + " ".join(f"{layer:>6}" for layer in report["layers"]))
    print("PLS R² (val)   " + " ".join(f"{v:6.3f}" for v in report["pls_r2"]))
    for name, vals in report["baselines"].items():
        print(f"{name[:10]:<10} val " + " ".join(f"{v:6.3f}" for v in vals))
    t = report["test"]
    print(f"test ({t['n_entities']} entities), layer {t['layer']} chosen on validation: PLS R² {t['pls_r2']:.3f}, "
          f"ridge {t['ridge']:.3f}, PCA+linear {t['pca_linear']:.3f}, shuffled {t['shuffled']:.3f}")
    if "flip_test" in report:
        f = report["flip_test"]
        print(f"test flips at layer {report['best_flip_layer']} (chosen on validation), any of {len(f['alphas'])} α, "
              f"{f['n_pairs']} prompts (baseline accuracy {f['baseline_accuracy']:.3f}): PLS "
              f"{report['flip_rate_pls']:.3f}, read-out direction {report['flip_rate_filter']:.3f}, random "
              f"{report['flip_rate_random']:.3f}")
    for h in result.headlines if "seeds" in report else []:
        print(f"{h.name}: {h.value:.3f} {h.note}")
    print(f"wrote {args.out}/report.json and report.html")
    return 0
