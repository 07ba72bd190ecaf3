"""``interp steer``: a contrastive steering vector from prompt pairs, and its strength sweep.

Parses arguments, reads and checks the pairs file before the model loads, and calls
``interp.experiments.steering.run`` (mean difference per layer, layer and strength chosen on validation,
behaviour and perplexity per strength on test).
"""
from __future__ import annotations

import argparse

from ._args import add_model_argument, known_n_layers, model_name, parse_layer_list

PAIRS_HELP = """\
pairs file format (JSONL, one object per line; other keys are ignored):
  {"prompt": "Is snow cold? Answer yes or no.", "positive": "Yes", "negative": "No"}
The prompt is chat-formatted and each answer appended as the start of the reply; the vector is the mean over
train pairs of (activation after the positive answer - after the negative answer) at the last answer token.
The behaviour metric counts replies whose first word is the positive (or negative) answer's first word, and
the answer margin log p(positive) - log p(negative); the cost is the cross-entropy of held-out prose.
Shipped example: data/steering_yes_no.jsonl (80 yes/no questions; SmolLM2 answers "No" to nearly all)."""


def add_parser(sub) -> None:
    from ..experiments.steering import Config

    d = Config()
    p = sub.add_parser("steer", help="contrastive steering vector from prompt pairs, with a strength sweep",
                       description="From pairs of the same prompt with a positive and a negative answer, take the "
                       "mean activation difference at the answer token per layer (CAA, steering-vectors), choose "
                       "the layer and strength on validation pairs, and sweep the strength on test pairs: behaviour "
                       "(replies opening with the positive answer, answer margin) and perplexity cost per strength. "
                       "Writes report.json, report.html and steering_vector.safetensors (usable with "
                       "`interp chat --direction`).",
                       epilog=PAIRS_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_argument(p, default="smollm2-135m-instruct")
    p.add_argument("--pairs", default=d.pairs, help="JSONL pairs file (default: data/steering_yes_no.jsonl)")
    p.add_argument("--layers", nargs="+", default=None,
                   help="candidate layers, space-separated, or 'all' (default: five over the middle of the model)")
    p.add_argument("--strengths", nargs="+", type=float, default=list(d.strengths),
                   help="strengths (multiples of the mean difference) to sweep, space-separated (default "
                   f"{' '.join(f'{s:g}' for s in d.strengths)})")
    p.add_argument("--site", default=d.site, help=f"residual site read and steered (default {d.site})")
    p.add_argument("--read", choices=["last", "answer"], default=d.read,
                   help="read the last answer token, or the mean over the answer tokens (default last)")
    p.add_argument("--positions", choices=["all", "prompt", "generated"], default=d.positions,
                   help="tokens the vector is added to (default all: prompt and reply)")
    p.add_argument("--max-ce-increase", type=float, default=d.max_ce_increase,
                   help=f"cost budget in nats/token for the strength chosen on validation (default {d.max_ce_increase})")
    p.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens, help=f"reply tokens (default {d.max_new_tokens})")
    p.add_argument("--ce-passages", type=int, default=d.ce_passages,
                   help=f"prose passages for the cost, per split (default {d.ce_passages})")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the train/validation/test split of the pairs")
    p.add_argument("--out", default="reports/steer", help="report folder (default reports/steer)")
    p.add_argument("--json", action="store_true", help="print one JSON object: the chosen layer and strength and "
                   "the test sweep (behaviour and perplexity per strength)")
    p.set_defaults(func=run)


def run(args) -> int:
    import json

    from ..experiments import steering
    from ..loading import load_model

    name = model_name(args)
    n_layers = known_n_layers(name)
    layers = None if args.layers is None else parse_layer_list(args.layers, n_layers)
    cfg = steering.Config(pairs=args.pairs, site=args.site, read=args.read, positions=args.positions,
                          layers=None if layers is None else tuple(layers), strengths=tuple(args.strengths),
                          max_ce_increase=args.max_ce_increase, max_new_tokens=args.max_new_tokens,
                          ce_passages=args.ce_passages, seed=args.seed)
    pairs = steering.check_config(cfg, n_layers)  # before the model loads
    model = load_model(name)
    if args.layers is not None and layers is None:  # 'all'
        cfg.layers = tuple(range(model.n_layers))
    if not args.json:
        print(f"{model}: {len(pairs)} pairs from {args.pairs}")
    result = steering.run(model, cfg, out=args.out)
    r = result.report
    if args.json:
        print(json.dumps({"model": model.name, "pairs": r["pairs"], "site": r["site"], "chosen": r["chosen"],
                          "sweep": [{k: v for k, v in row.items() if k != "examples"} for row in r["test_sweep"]],
                          "out": str(args.out)}))
        return 0
    c = r["chosen"]
    print(f"chosen on validation: {r['site']}.{c['layer']}, strength {c['strength']:g}")
    print("strength  positive  negative  margin  CE+     perplexity")
    for row in r["test_sweep"]:
        print(f"{row['strength']:>8g}  {row['positive_rate']:8.2f}  {row['negative_rate']:8.2f}  {row['margin']:6.2f}"
              f"  {row['ce_increase']:+.3f}  {row['perplexity']:.2f}")
    print(result.conclusion)
    print(f"report: {args.out}/report.json and {args.out}/report.html ({r['seconds']} s)")
    return 0
