"""``interp illusion``: subspace-patching illusion checks (Makelov et al.)."""
from __future__ import annotations

import json


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
