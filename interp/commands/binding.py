"""``interp binding``: IsSameObject pairwise probes on a language model's tokens (Li et al.).

Parses arguments, validates layers and settings before the model loads, and
calls ``interp.experiments.binding.run`` (which writes report.json and
report.html).

Example:
    interp binding smollm2-135m-instruct --out runs/binding --layers 0 6 12
"""
from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("binding", help="IsSameObject pairwise probes: do two tokens belong to the same entity",
                       description="Fit linear, diagonal, full and low-rank pairwise probes (and cosine/dot "
                       "baselines) on resid_post per layer for same-entity token pairs from annotated texts "
                       "(data/coref_texts.jsonl); texts split into train / validation / test; kind, layer and "
                       "rank chosen on validation, cross-mention pairs (different mentions of one entity) reported "
                       "on the test texts apart from within-mention ones; ablate the learned subspace and a random "
                       "one. Writes report.json and report.html.")
    p.add_argument("model", metavar="MODEL", help="packaged model name, .gguf file, local folder or hub id")
    p.add_argument("--out", required=True, help="output folder for report.json and report.html")
    p.add_argument("--layers", nargs="+", default=["all"],
                   help="'all', 'every:N' (every Nth layer) or layer indices, space-separated (default all)")
    p.add_argument("--task", default="entity", choices=["entity", "word"],
                   help="entity: same coreference entity; word: sub-word tokens of one word (default entity)")
    p.add_argument("--texts", default=None, help="annotated JSONL (default data/coref_texts.jsonl)")
    p.add_argument("--kinds", nargs="+", default=None, metavar="KIND",
                   help="probe kinds and baselines, space-separated, from linear diagonal full lowrank cosine dot "
                   "(default: all of them)")
    p.add_argument("--rank", type=int, default=16, help="rank of the per-layer low-rank probe (default 16)")
    p.add_argument("--ranks", nargs="+", default=None,
                   help="ranks for the sweep at the best layer, space-separated (default 1 2 4 8 16 32 64)")
    p.add_argument("--epochs", type=int, default=30, help="training epochs per probe (default 30)")
    p.add_argument("--per-anchor", type=int, default=3,
                   help="cross- and within-mention partners per anchor token, each matched by negatives (default 3)")
    p.add_argument("--val-fraction", type=float, default=0.2,
                   help="fraction of texts for validation, where every choice is made (default 0.2)")
    p.add_argument("--test-fraction", type=float, default=0.2,
                   help="fraction of texts held out for the reported numbers (default 0.2)")
    p.add_argument("--bilinear-scale", default="sqrt_d", choices=["sqrt_d", "none"],
                   help="divide the full/low-rank probe's score by sqrt(d) as the authors' code does (default "
                   "sqrt_d)")
    p.add_argument("--no-ablation", action="store_true", help="skip the subspace ablation")
    p.add_argument("--seed", type=int, default=0, help="seed for pair sampling, the split and probe init")
    p.add_argument("--seeds", nargs="+", default=None, metavar="SEED",
                   help="run once per seed (space-separated) and report mean ± spread of the headlines")
    p.set_defaults(func=run)


def parse_layers(values, n_layers: int | None = None) -> list[int] | str:
    """``--layers`` values → layer indices, or the 'all' / 'every:N' spec when the layer count is unknown.

    Space-separated indices, the older comma form ('0,5,9'), 'all' and 'every:N' all work.

    Example:
        >>> parse_layers(["every:3"], 8)
        [0, 3, 6]
        >>> parse_layers(["2", "1"], 4), parse_layers("0,5", 8)
        ([1, 2], [0, 5])
    """
    from ..errors import InterpError
    from ..experiments.binding import resolve_layers
    from ._args import split_list

    items = split_list(values)
    if len(items) == 1 and (items[0] == "all" or items[0].startswith("every:")):
        layers = resolve_layers(items[0], n_layers)
        return items[0] if layers is None else layers
    try:
        indices = [int(x) for x in items]
    except ValueError:
        raise InterpError(f"--layers takes 'all', 'every:N' or integer layer indices, got {' '.join(items)!r}") \
            from None
    return resolve_layers(indices, n_layers)


def parse_ranks(values, option: str = "--ranks") -> list[int]:
    """``--ranks`` (or ``--seeds``) values (space-separated, or the older '1,2,4') → integers."""
    from ..errors import InterpError
    from ._args import split_list

    try:
        return [int(r) for r in split_list(values)]
    except ValueError:
        raise InterpError(f"{option} takes integers, got {values!r}") from None


def run(args) -> int:
    from ..experiments import binding
    from ..loading import load_model
    from ._args import known_n_layers, split_list

    n_layers = known_n_layers(args.model)
    given = {}  # kinds and ranks keep the Config defaults unless given (importing them would slow every command)
    if args.kinds is not None:
        given["kinds"] = tuple(split_list(args.kinds))
    if args.ranks is not None:
        given["ranks"] = tuple(parse_ranks(args.ranks))
    config = binding.Config(layers=parse_layers(args.layers, n_layers), task=args.task, texts=args.texts,
                            rank=args.rank, epochs=args.epochs, per_anchor=args.per_anchor,
                            val_fraction=args.val_fraction, test_fraction=args.test_fraction,
                            bilinear_scale=args.bilinear_scale, ablation=not args.no_ablation, seed=args.seed,
                            seeds=parse_ranks(args.seeds, "--seeds") if args.seeds else None, **given)
    binding.check_config(config, n_layers)  # fail before the model loads
    model = load_model(args.model)
    result = binding.run(model, config, out=args.out)
    print("\n".join(binding.summary_lines(result.report)))
    print(f"wrote {args.out}/report.json and report.html ({result.report['seconds']} s)")
    return 0
