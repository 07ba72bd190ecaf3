"""GPU check (issue 20 part 4): the demo pipeline and the benchmarks on a CUDA device, with their times.

Runs, on ``--device`` (default ``cuda``) with ``--dtype`` weights (default bfloat16):

1. capture: a plain forward vs ``interp.capture`` of every layer's ``resid_post`` (last 8 positions),
   median of ``--reps`` timed runs, each ended by ``torch.cuda.synchronize``; the captures are checked
   finite and float32;
2. generate: ``interp.bench.generate.bench_generate`` (plain tokens/s and the cost of interventions);
3. demo: a small refusal run (``interp.experiments.refusal`` with ``--n-train`` prompts per class)
   end to end: split, candidates, selection, held-out evaluation and report.

On a machine without CUDA it prints why and exits with status 2 before loading anything.
Paste the printed table into the README's benchmark section (``--json`` prints one JSON object).

Usage:
    HF_HUB_OFFLINE=1 .venv/bin/python probes/gpu_check.py --out reports/gpu_check      # the demo model, bf16
    HF_HUB_OFFLINE=1 .venv/bin/python probes/gpu_check.py smollm2-135m-instruct --no-filter
    HF_HUB_OFFLINE=1 .venv/bin/python probes/gpu_check.py qwen2.5-coder-1.5b-instruct --dtype float16 --json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

NO_CUDA = ("gpu_check: no CUDA device here (torch.cuda.is_available() is False). This check times interp on an "
           "NVIDIA GPU; run it on a machine with one (CUDA build of torch, a visible GPU: nvidia-smi, "
           "CUDA_VISIBLE_DEVICES). CPU numbers come from `interp bench capture` / `interp bench generate`.")


def _timed(fn, reps: int, sync) -> float:
    """Median wall seconds of ``fn`` over ``reps`` runs after one warm-up, the device synchronized."""
    fn()
    sync()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_capture_on(model, batch: int, seq: int, reps: int, sync) -> dict:
    import torch

    from interp.bench.capture import _random_encoded
    from interp.capture import capture

    enc = _random_encoded(model, batch, seq)
    padded = model.pad(enc.ids)
    sites = [f"resid_post.{layer}" for layer in range(model.n_layers)]

    def plain():
        with torch.no_grad():
            model.hf(**padded, use_cache=False)

    acts = capture(model, None, sites, "-8:", encoded=enc, batch_size=batch, progress=False)
    finite = all(torch.isfinite(acts[s]).all().item() for s in sites)
    plain_s = _timed(plain, reps, sync)
    interp_s = _timed(lambda: capture(model, None, sites, "-8:", encoded=enc, batch_size=batch, progress=False),
                      reps, sync)
    return {"batch": batch, "seq": seq, "plain_forward_s": round(plain_s, 4), "capture_s": round(interp_s, 4),
            "ratio": round(interp_s / plain_s, 3), "captures_float32": acts[sites[0]].dtype == torch.float32,
            "captures_finite": bool(finite)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", nargs="?", default="qwen2.5-coder-1.5b-instruct",
                   help="packaged name, folder or hub id (default: the demo model)")
    p.add_argument("--device", default="cuda", help="a CUDA device (default cuda)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"],
                   help="weight dtype (default bfloat16)")
    p.add_argument("--reps", type=int, default=5, help="timed repetitions per measurement (default 5)")
    p.add_argument("--batch", type=int, default=16, help="prompts per batch (default 16)")
    p.add_argument("--seq", type=int, default=128, help="tokens per prompt in the capture benchmark (default 128)")
    p.add_argument("--new-tokens", type=int, default=32, help="tokens per prompt in the generate benchmark")
    p.add_argument("--n-train", type=int, default=16, help="demo: training prompts per class (default 16)")
    p.add_argument("--skip-demo", action="store_true", help="only the benchmarks")
    p.add_argument("--no-filter", action="store_true",
                   help="demo: do not filter train/val prompts by the baseline (models that rarely refuse, e.g. smollm2)")
    p.add_argument("--out", help="demo report folder (default: none written)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)

    import torch

    if not str(args.device).startswith("cuda") or not torch.cuda.is_available():
        print(NO_CUDA, file=sys.stderr)
        return 2
    import interp
    from interp.bench.generate import bench_generate

    dtype = getattr(torch, args.dtype)

    def sync():
        torch.cuda.synchronize(args.device)

    t0 = time.perf_counter()
    model = interp.load_model(args.model, dtype=dtype, device=args.device, progress=not args.json)
    sync()
    result = {"model": args.model, "device": torch.cuda.get_device_name(args.device), "dtype": args.dtype,
              "torch": torch.__version__, "load_s": round(time.perf_counter() - t0, 2)}
    result["capture"] = bench_capture_on(model, args.batch, args.seq, args.reps, sync)
    gen = bench_generate(model, batch=args.batch, new_tokens=args.new_tokens, reps=args.reps, progress=False,
                         peers=False)
    result["generate"] = {k: gen[k] for k in ("plain_tok_s", "ratios") if k in gen}
    if not args.skip_demo:
        from interp.commands.demo import DEMO_FILTERS
        from interp.experiments import refusal

        # interp demo's selection filters for this model, at a smaller size
        config = refusal.Config(n_train=args.n_train, n_val=max(4, args.n_train // 2), n_eval=max(4, args.n_train // 2),
                                max_new_tokens=24, batch_size=args.batch, filter_train=not args.no_filter,
                                **DEMO_FILTERS.get(args.model, {}))
        t0 = time.perf_counter()
        res = refusal.run(model, config, args.out, progress=not args.json)
        sync()
        result["demo"] = {"wall_s": round(time.perf_counter() - t0, 2), "layer": res.layer, "position": res.position,
                          "config": {"n_train": config.n_train, "n_val": config.n_val, "n_eval": config.n_eval}}
    result["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(args.device) / 2**20, 1)
    if args.json:
        print(json.dumps(result))
        return 0
    c, g = result["capture"], result["generate"]
    print(f"{result['model']} on {result['device']} ({result['dtype']}, torch {result['torch']}), "
          f"load {result['load_s']} s, peak GPU memory {result['peak_gpu_mb']} MB")
    print(f"  capture  batch {c['batch']} x {c['seq']} tokens: plain forward {c['plain_forward_s']} s, interp capture "
          f"(all resid_post, last 8) {c['capture_s']} s = {c['ratio']}x; float32 {c['captures_float32']}, "
          f"finite {c['captures_finite']}")
    print(f"  generate {args.batch} x {args.new_tokens} tokens: plain {g.get('plain_tok_s')} tok/s; "
          f"ratios {g.get('ratios')}")
    if "demo" in result:
        d = result["demo"]
        print(f"  demo     refusal run ({d['config']}): {d['wall_s']} s, chosen layer {d['layer']}, "
              f"position {d['position']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
