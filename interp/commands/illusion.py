"""``interp illusion``: subspace-patching illusion checks (Makelov et al.)."""
from __future__ import annotations

import json

from ._args import known_n_layers, split_list


def add_parser(sub) -> None:
    p = sub.add_parser("illusion", help="subspace-patching illusion checks",
                       description="Check whether a 1-D subspace patch is faithful or an illusion: split the "
                       "direction into the parts its reader sees (rowspace) and ignores (nullspace), re-patch along "
                       "each, and measure how much each varies on real inputs. --toy runs the paper's three-unit "
                       "toy model.")
    p.add_argument("--toy", action="store_true", help="run the three-unit toy model (disconnected, dormant, faithful)")
    p.add_argument("--direction", nargs=3, type=float, default=None, metavar=("H1", "H2", "H3"),
                   help="toy only: the direction to patch along (default (e1 + e2)/sqrt 2)")
    p.add_argument("--json", action="store_true", help="print the checks as one JSON object")
    p.set_defaults(func=run)

    q = sub.add_parser("patch", help="activation patching sweep, DAS and illusion checks on a task",
                       description="Patch clean activations into corrupted runs at every site x layer x position, "
                       "learn 1-D DAS directions in an MLP hidden layer and in the residual stream, and run the "
                       "illusion checks on them. Writes report.json and report.html.")
    q.add_argument("model", metavar="MODEL", help="packaged model name, .gguf file, local folder or hub id")
    q.add_argument("--task", default=None, help="task JSON with names and templates (default: data/ioi_task.json)")
    q.add_argument("--out", default=None, help="output folder (required by the default sweep method)")
    q.add_argument("--method", choices=["sweep", "attribution"], default="sweep",
                   help="'sweep' (default): activation patching, DAS and the illusion checks; 'attribution': "
                   "attribution patching (AtP) estimates of every site's patching effect beside the real sweep on "
                   "the same pairs, with their Spearman correlation and the speed-up (interp.attribution)")
    q.add_argument("--graddrop", action="store_true",
                   help="attribution only: also AtP*'s GradDrop estimate (one more forward and backward per layer)")
    q.add_argument("--json", action="store_true", help="attribution only: print the comparison as one JSON object")
    q.add_argument("--pairs", type=int, default=32,
                   help="clean/corrupted pairs over train (1/2), validation (1/4) and test (1/4) (default 32)")
    q.add_argument("--positions", nargs="+", type=int, default=[-1, -2, -3, -4, -5],
                   help="sweep positions from the end, space-separated (default -1 -2 -3 -4 -5)")
    q.add_argument("--sites", nargs="+", default=["resid_pre", "attn_out", "mlp_out"],
                   help="sweep sites, space-separated; resid_pre and attn_out choose the DAS layers "
                   "(default resid_pre attn_out mlp_out)")
    q.add_argument("--mlp-layer", type=int, default=None,
                   help="layer for the MLP DAS (default: the residual DAS layer)")
    q.add_argument("--resid-layer", type=int, default=None,
                   help="layer for the residual DAS (default: the first layer whose resid_pre patch at the last "
                   "position reaches half of its value at the layer whose attn_out patch there matters most)")
    q.add_argument("--readout", default=None,
                   help="what reads the residual DAS site, for its rowspace/nullspace split: 'q.LAYER:HEAD,HEAD' "
                   "(those heads' query projections), 'answers' (unembedding rows of the answer tokens) or "
                   "'unembed' (default: the queries of the 3 heads that matter most in the layer whose attn_out "
                   "patch at the last position matters most)")
    q.add_argument("--das-steps", type=int, default=60, help="optimizer steps for DAS (default 60)")
    q.add_argument("--seed", type=int, default=0, help="seed for the split, names and the DAS start (default 0)")
    q.add_argument("--seeds", nargs="+", type=int, default=None,
                   help="run once per seed, space-separated, and report mean ± spread (e.g. --seeds 0 1 2)")
    q.add_argument("--split-by", choices=["template", "pair"], default="template",
                   help="'template': train/validation/test pairs use disjoint templates and names, as the official "
                   "code (default); 'pair': pairs drawn from all templates and names")
    q.add_argument("--random-directions", type=int, default=3,
                   help="random unit directions patched on the test pairs as the control (default 3)")
    q.set_defaults(func=run_patch)


def run(args) -> int:
    import torch

    from ..analyzers.illusion import ToyIllusion
    from ..errors import InterpError

    if not args.toy:
        raise InterpError("only --toy is available from the command line so far; use "
                          "interp.analyzers.illusion.illusion_checks from Python for a model's own sites")
    v = torch.tensor(args.direction, dtype=torch.float64) if args.direction else None
    report = ToyIllusion().checks(v).to_dict()
    print(json.dumps(report) if args.json else f"{report['verdict']}\n{json.dumps(report, indent=1)}")
    return 0


def run_patch(args) -> int:
    from ..errors import InterpError
    from ..experiments import patching
    from ..loading import load_model

    if args.method == "attribution":
        return _run_attribution(args)
    if args.out is None:
        raise InterpError("the sweep method writes a report: pass --out FOLDER (or use --method attribution)")
    if args.graddrop or args.json:
        raise InterpError("--graddrop and --json go with --method attribution")

    config = patching.Config(pairs=args.pairs, task_path=args.task, seed=args.seed, positions=tuple(args.positions),
                             sites=tuple(split_list(args.sites)), mlp_layer=args.mlp_layer, resid_layer=args.resid_layer,
                             readout=args.readout, das_steps=args.das_steps, seeds=args.seeds,
                             split_by=args.split_by, random_directions=args.random_directions)
    patching.check_config(config, known_n_layers(args.model))  # fail before the model loads
    model = load_model(args.model)
    result = patching.run(model, config, out=args.out)
    r = result.report
    p = r["protocol"]
    print(f"pairs: {p['n_train']} train, {p['n_val']} validation, {p['n_test']} test (split by {p['split_unit']}); "
          f"choices on validation: {r['chosen']}")
    print("logit difference (clean answer − corrupted answer), clean / corrupted prompts: " + ", ".join(
        f"{k} {m['clean']:.2f} / {m['corrupted']:.2f} ({m['clean_solved']:.0%} of clean solved)"
        for k, m in r["metrics"].items()))
    for key, s in r["subspaces"].items():
        f, fl = s["fraction_of_effect"], s["fldd"]
        print(f"{s['site']} (test pairs): fraction of effect full {f['full']:.3f}, DAS {f['das']:.3f}, rowspace "
              f"{f['rowspace']:.3f}, nullspace {f['nullspace']:.3f}, "
              f"random max {max(s['random_effect'], default=0):.3f}")
        print(f"  FLDD (the paper's scale): full {fl['full']:.1f}%, DAS {fl['das']:.1f}%, rowspace "
              f"{fl['rowspace']:.1f}%, nullspace {fl['nullspace']:.1f}%")
        print(f"  {s['verdict']}")
        print(f"  raw-part patch (before the fix): rowspace {s['unnormalized']['rowspace']:.3f}, nullspace "
              f"{s['unnormalized']['nullspace']:.3f}: {s['unnormalized']['verdict'].split(':')[0]}")
    if "seeds" in r:
        for h in result.headlines:
            if isinstance(h.value, float):
                print(f"{h.name}: {h.value:.3f} {h.note} [{h.split}]")
    print(f"wrote {args.out}/report.json and report.html")
    return 0


def _run_attribution(args) -> int:
    """AtP beside the activation-patching sweep on IOI pairs (all --pairs, no split: nothing is chosen)."""
    from .. import plots
    from ..attribution import compare_with_patching
    from ..data.ioi import ioi_task
    from ..errors import InterpError
    from ..loading import load_model
    from ..report import Headline, Result, write_report
    from ..sites import SITE_NAMES

    sites = tuple(split_list(args.sites))
    if args.seeds is not None:
        raise InterpError("--seeds goes with the sweep method; run --method attribution once per --seed")
    bad = [x for x in sites if x not in SITE_NAMES]
    if bad:
        raise InterpError(f"unknown site(s) {bad}; use names from {', '.join(SITE_NAMES)}")
    if args.pairs < 1 or any(p >= 0 for p in args.positions):
        raise InterpError(f"need --pairs >= 1 and negative --positions (-1 = last token), got {args.pairs} and "
                          f"{args.positions}")
    known_n_layers(args.model)  # an unknown model fails here, before loading
    model = load_model(args.model)
    task = ioi_task(model, n=args.pairs, seed=args.seed, path=args.task)
    report = compare_with_patching(model, task, sites, positions=args.positions, graddrop=args.graddrop,
                                   progress=not args.json)
    report["model"] = model.describe()
    rho = report["spearman_vs_activation_patching"]
    if args.out is not None:
        figs = {f"AtP {k}": v for k, v in plots.patching_heatmaps(report["attribution"]).items()}
        figs.update(plots.patching_heatmaps(report["activation_patching"]))
        split = f"IOI pairs (n={report['n_pairs']}, seed {args.seed})"
        heads = [Headline(f"Spearman of AtP vs activation patching, {k}", v, split,
                          target=">= 0.7 at the residual stream" if k == "resid_pre" else None) for k, v in rho.items()]
        heads.append(Headline("speed-up of AtP over the sweep (wall time)", report["speedup"], split,
                              target=">= 10x"))
        write_report(Result("attribution", report, figures=figs, headlines=heads, timing=report["seconds"],
                            title=f"Attribution patching vs activation patching: {model.name}"), args.out, model=model)
    if args.json:
        print(json.dumps(report))
        return 0
    s = report["seconds"]
    print(f"{report['n_pairs']} IOI pairs; AtP {s['attribution']:.2f} s, activation patching sweep "
          f"{s['activation_patching']:.2f} s: speed-up {report['speedup']:.1f}x")
    print("Spearman of AtP vs activation patching: " + ", ".join(f"{k} {v:.3f}" for k, v in rho.items()))
    if "spearman_graddrop_vs_abs_activation_patching" in report:
        print("GradDrop (unsigned) vs |activation patching|: " + ", ".join(
            f"{k} {v:.3f}" for k, v in report["spearman_graddrop_vs_abs_activation_patching"].items()))
    if args.out is not None:
        print(f"wrote {args.out}/report.json and report.html")
    return 0
