"""``interp models``: the packaged models and whether each is cached."""
from __future__ import annotations

import json


def add_parser(sub) -> None:
    p = sub.add_parser("models", help="list packaged models and whether they are cached",
                       description="List the models that ship inside PyPI packages, and what of each is in the "
                       "cache ($INTERP_HOME, default ~/.cache/interp).")
    p.add_argument("--json", action="store_true", help="print one JSON list instead of a table")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..packaged import cached_status, interp_home

    rows = cached_status()
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"cache: {interp_home()}")
    for r in rows:
        state = "ready" if r["safetensors_cached"] else ("gguf only" if r["gguf_cached"] else "not cached")
        default = " (default)" if r["default"] else ""
        print(f"  {r['name']:<30} {state:<11} {r['download_mb']:>5} MB  {r['description']}{default}")
    return 0
