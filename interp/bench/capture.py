"""``interp bench capture``: the cost of capture against a plain forward pass.

Measured in one process on one batch (default 8 prompts x 64 tokens): a plain
Hugging Face forward (logits), interp capture of resid_post at every layer for
the last 5 positions (in memory and to an ActivationStore), TransformerLens'
``run_with_cache`` on the same hook points, and nnsight's trace. Each timing is
the median of ``reps`` runs after a warm-up. Peak RSS during store captures of N
and 10·N prompts and the streaming fits from them (difference of means, Latent
Guard, effective rank: ``fit_store``) is sampled in fresh subprocesses, next to
the RSS with just the model loaded; it stays flat when the store grows. The
``parallel`` entry times the same store capture by 1 process and by 2 torchrun
workers (``interp.distributed``).
"""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable

import torch

N_POSITIONS = 5


def _median_time(fn: Callable[[], object], reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _random_encoded(model, batch: int, seq: int, seed: int = 0):
    from ..model import Encoded

    gen = torch.Generator().manual_seed(seed)
    special = set(model.tokenizer.all_special_ids)
    ids = []
    while len(ids) < batch:
        row = torch.randint(0, len(model.tokenizer), (seq,), generator=gen).tolist()
        if not special.intersection(row):
            ids.append(row)
    return Encoded([f"random-{i}" for i in range(batch)], ids, [None] * batch)


def bench_capture(model_name: str, batch: int = 8, seq: int = 64, reps: int = 5, rss_n: int = 64,
                  progress: bool = True, rss_seq: int = 16, parallel_n: int = 64, parallel_workers: int = 2) -> dict:
    from ..capture import capture
    from ..loading import load_model
    from ..store import capture_to_store

    model = load_model(model_name, progress=progress)
    enc = _random_encoded(model, batch, seq)
    padded = model.pad(enc.ids)
    sites = [f"resid_post.{layer}" for layer in range(model.n_layers)]
    positions = f"-{N_POSITIONS}:"
    result: dict = {"model": model_name, "batch": batch, "seq": seq, "reps": reps,
                    "torch_threads": torch.get_num_threads(), "ratios": {}, "reasons": {}}

    def plain():
        with torch.no_grad():
            model.hf(**padded, use_cache=False)

    plain_s = _median_time(plain, reps)
    result["plain_forward_s"] = round(plain_s, 4)
    interp_s = _median_time(lambda: capture(model, None, sites, positions, encoded=enc, batch_size=batch,
                                            progress=False), reps)
    result["ratios"]["interp_memory"] = round(interp_s / plain_s, 3)

    with tempfile.TemporaryDirectory() as tmp:
        counter = {"i": 0}

        def to_store():
            counter["i"] += 1
            texts = [f"{t}-{counter['i']}" for t in enc.texts]
            _store_from_encoded(model, type(enc)(texts, enc.ids, enc.spans), f"{tmp}/s{counter['i']}", sites,
                                positions, batch, capture_to_store)

        store_s = _median_time(to_store, reps)
    result["ratios"]["interp_store"] = round(store_s / plain_s, 3)

    try:
        tl = _tl_timing(model, padded, reps)
        result["ratios"]["transformer_lens"] = round(tl / plain_s, 3)
    except Exception as e:  # a peer that cannot run gets null and a reason
        result["ratios"]["transformer_lens"] = None
        result["reasons"]["transformer_lens"] = f"{type(e).__name__}: {e}"[:300]
    try:
        nn_s = _nnsight_timing(model, padded, reps)
        result["ratios"]["nnsight"] = round(nn_s / plain_s, 3)
    except Exception as e:
        result["ratios"]["nnsight"] = None
        result["reasons"]["nnsight"] = f"{type(e).__name__}: {e}"[:300]

    small, big = _rss_subprocess(model_name, rss_n, rss_seq), _rss_subprocess(model_name, 10 * rss_n, rss_seq)
    result["peak_rss_mb"] = {"n": small.get("peak"), "10n": big.get("peak")}
    result["peak_rss_fit_mb"] = {"n": small.get("fit_peak"), "10n": big.get("fit_peak")}
    result["rss_model_loaded_mb"] = {"n": small.get("load"), "10n": big.get("load")}
    result["rss_prompts"] = {"n": rss_n, "10n": 10 * rss_n, "seq": rss_seq}
    result["rss_fits"] = {"n": small.get("fits"), "10n": big.get("fits")}
    if small.get("error") or big.get("error"):
        result["reasons"]["peak_rss"] = (small.get("error") or big.get("error"))[-300:]
    result["parallel"] = _parallel_timing(model_name, parallel_n, rss_seq, parallel_workers)
    return result


def _store_from_encoded(model, enc, out, sites, positions, batch, capture_to_store, shard_size=None):
    capture_to_store(model, None, out, sites, positions, shard_size=shard_size or len(enc.texts),
                     batch_size=batch, chat=False, progress=False, encoded=enc)


def _tl_timing(model, padded, reps: int) -> float:
    from ..tl_backend import TLModel

    tl = TLModel.from_hf(model.hf, model.tokenizer, model.name, model.source)
    names = {f"blocks.{layer}.hook_resid_post" for layer in range(model.n_layers)}

    def run():
        with torch.no_grad():
            tl.bridge.run_with_cache(padded["input_ids"], attention_mask=padded["attention_mask"],
                                     names_filter=lambda n: n in names)

    return _median_time(run, reps)


def _nnsight_timing(model, padded, reps: int) -> float:
    from nnsight import LanguageModel

    lm = LanguageModel(model.hf, tokenizer=model.tokenizer)
    def run():
        saved = []
        with torch.no_grad(), lm.trace({"input_ids": padded["input_ids"],
                                        "attention_mask": padded["attention_mask"]}):
            for layer in range(model.n_layers):
                out = lm.model.layers[layer].output
                out = out[0] if isinstance(out, tuple) else out
                saved.append(out[:, -N_POSITIONS:].save())
        return saved

    return _median_time(run, reps)


_RSS_SCRIPT = """
import json, sys, tempfile, threading, time
import numpy as np
from interp.analyzers.harmfulness import LatentGuard
from interp.analyzers.rank import EffectiveRank
from interp.analyzers.refusal import DiffOfMeans
from interp.bench.capture import _random_encoded
from interp.loading import load_model
from interp.store import capture_to_store

def rss_mb():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) / 1024

name, n, seq = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
model = load_model(name, progress=False)
enc = _random_encoded(model, n, seq, seed=1)
layers = model.n_layers
sites = [f"resid_post.{l}" for l in range(layers)]
mid = f"resid_post.{layers // 2}"
y = np.arange(n) % 2
before, peak, done = rss_mb(), [0.0], threading.Event()

def sample():  # VmRSS every 20 ms while captures and fits run
    while not done.is_set():
        peak[0] = max(peak[0], rss_mb())
        time.sleep(0.02)

thread = threading.Thread(target=sample, daemon=True)
thread.start()
kw = dict(shard_size=64, batch_size=8, chat=False, progress=False, encoded=enc)
with tempfile.TemporaryDirectory() as tmp:
    # every layer at the last token (directions, guard); one layer at every token (rank)
    last = capture_to_store(model, None, tmp + "/last", sites, "last", **kw)
    every = capture_to_store(model, None, tmp + "/all", [mid], "all", **kw)
    capture_peak, peak[0] = peak[0], 0.0
    DiffOfMeans(positive=1).fit_store(last, y)
    LatentGuard().fit_store(last, y)
    fits = ["diff_of_means", "latent_guard"]
    if every.n_tokens > model.d_model:  # a covariance needs more tokens than dimensions (small --rss-n: skipped)
        EffectiveRank(n_bootstrap=10).fit_store(every, mid)
        fits.append("effective_rank")
done.set()
thread.join()
print(json.dumps({"load": before, "peak": max(capture_peak, peak[0]), "fit_peak": peak[0], "fits": fits}))
"""


def _rss_subprocess(model_name: str, n: int, seq: int) -> dict:
    """In a fresh process: RSS with the model loaded, peak RSS over store captures of ``n`` prompts and the
    streaming fits (difference of means, Latent Guard, effective rank) from those stores, and the fits' own
    peak; MB. ``{"error": ...}`` if it failed."""
    out = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, model_name, str(n), str(seq)], capture_output=True,
                         text=True)
    if out.returncode != 0:
        return {"error": out.stderr}
    return {k: v if k == "fits" else round(float(v), 1)
            for k, v in json.loads(out.stdout.strip().splitlines()[-1]).items()}


_PARALLEL_SCRIPT = """
import json, sys, tempfile, time
from interp.bench.capture import _random_encoded
from interp.distributed import capture_to_store_parallel, init, world
from interp.loading import load_model

name, n, seq, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
rank, size = init()
model = load_model(name, progress=False)
enc = _random_encoded(model, n, seq, seed=2)
sites = [f"resid_post.{l}" for l in range(model.n_layers)]
t = time.perf_counter()
capture_to_store_parallel(model, None, out, sites, "last", shard_size=8, batch_size=8, chat=False,
                          progress=False, encoded=enc)
if rank == 0:
    print(json.dumps({"capture_s": time.perf_counter() - t, "workers": size}))
"""


def _parallel_timing(model_name: str, n: int, seq: int, workers: int) -> dict:
    """Wall time of a store capture of ``n`` prompts by 1 process and by ``workers`` torchrun workers on this
    machine (CPU threads split evenly), each from process start (``wall_s``) and for the capture alone."""
    import os

    cores = os.cpu_count() or 1
    out: dict = {"prompts": n, "seq": seq, "cores": cores}
    for w in (1, workers):
        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, cores // w)), "TOKENIZERS_PARALLELISM": "false"}
        with tempfile.TemporaryDirectory() as tmp:
            args = ["-c", _PARALLEL_SCRIPT] if w == 1 else \
                ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={w}", "-c", _PARALLEL_SCRIPT]
            if w > 1:  # torchrun runs a script file, not -c
                script = os.path.join(tmp, "worker.py")
                with open(script, "w") as f:
                    f.write(_PARALLEL_SCRIPT)
                args = args[:-2] + [script]
            t = time.perf_counter()
            r = subprocess.run([sys.executable, *args, model_name, str(n), str(seq), os.path.join(tmp, "s")],
                               capture_output=True, text=True, env=env)
            wall = time.perf_counter() - t
        key = f"workers_{w}"
        if r.returncode != 0:
            out[key] = {"error": (r.stderr or r.stdout)[-300:]}
            continue
        line = json.loads([x for x in r.stdout.splitlines() if x.startswith("{")][-1])
        out[key] = {"wall_s": round(wall, 2), "capture_s": round(line["capture_s"], 2)}
    return out


def print_table(result: dict) -> None:
    print(f"capture benchmark on {result['model']} ({result['batch']} x {result['seq']} tokens, "
          f"{result['torch_threads']} threads, median of {result['reps']})")
    print(f"  plain HF forward           {result['plain_forward_s']:.3f} s   (1.00x)")
    labels = {"interp_memory": "interp capture, memory", "interp_store": "interp capture, to store",
              "transformer_lens": "TransformerLens run_with_cache", "nnsight": "nnsight trace"}
    for key, label in labels.items():
        r = result["ratios"].get(key)
        text = f"{r:.3f}x" if r is not None else f"n/a ({result['reasons'].get(key, '')})"
        print(f"  {label:<31} {text}")
    rss, fit = result["peak_rss_mb"], result["peak_rss_fit_mb"]
    load = result["rss_model_loaded_mb"]
    print(f"  peak RSS, store captures (64-prompt shards) + streaming fits: {rss['n']} MB for "
          f"{result['rss_prompts']['n']} prompts, {rss['10n']} MB for {result['rss_prompts']['10n']} (fits alone: "
          f"{fit['n']} / {fit['10n']} MB; model loaded: {load['n']} / {load['10n']} MB)")
    par = result.get("parallel", {})
    for key in sorted(k for k in par if k.startswith("workers_")):
        v = par[key]
        text = f"{v['wall_s']} s wall, {v['capture_s']} s capture" if "wall_s" in v else f"n/a ({v['error']})"
        print(f"  store capture of {par['prompts']} prompts, {key.split('_')[1]} worker(s): {text}")


if __name__ == "__main__":
    print(json.dumps(bench_capture(sys.argv[1] if len(sys.argv) > 1 else "smollm2-135m-instruct")))
