"""``interp bench capture``: the cost of capture against a plain forward pass.

Measured in one process on one batch (default 8 prompts x 64 tokens): a plain
Hugging Face forward (logits), interp capture of resid_post at every layer for
the last 5 positions (in memory and to an ActivationStore), TransformerLens'
``run_with_cache`` on the same hook points, and nnsight's trace. Each timing is
the median of ``reps`` runs after a warm-up. Peak RSS during a store capture of N
and 10·N prompts is sampled in fresh subprocesses, next to the RSS with just
the model loaded.
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
                  progress: bool = True) -> dict:
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

    (load_n, peak_n), (load_10n, peak_10n) = _rss_subprocess(model_name, rss_n, seq), \
        _rss_subprocess(model_name, 10 * rss_n, seq)
    result["peak_rss_mb"] = {"n": peak_n, "10n": peak_10n}
    result["rss_model_loaded_mb"] = {"n": load_n, "10n": load_10n}
    result["rss_prompts"] = {"n": rss_n, "10n": 10 * rss_n}
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
import sys, tempfile, threading, time
from interp.loading import load_model
from interp.bench.capture import _random_encoded, _store_from_encoded
from interp.store import capture_to_store

def rss_mb():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) / 1024

name, n, seq = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
model = load_model(name, progress=False)
enc = _random_encoded(model, n, seq, seed=1)
sites = [f"resid_post.{l}" for l in range(model.n_layers)]
before, peak, done = rss_mb(), [0.0], threading.Event()

def sample():  # VmRSS every 20 ms while the capture runs
    while not done.is_set():
        peak[0] = max(peak[0], rss_mb())
        time.sleep(0.02)

thread = threading.Thread(target=sample, daemon=True)
thread.start()
with tempfile.TemporaryDirectory() as tmp:
    _store_from_encoded(model, enc, tmp + "/s", sites, "-5:", 8, capture_to_store, shard_size=64)
done.set()
thread.join()
print(before, peak[0])
"""


def _rss_subprocess(model_name: str, n: int, seq: int) -> tuple[float | None, float | None]:
    """(RSS with the model loaded, peak RSS during the store capture), MB, in a fresh process."""
    out = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, model_name, str(n), str(seq)], capture_output=True,
                         text=True)
    if out.returncode != 0:
        return None, None
    load, peak = out.stdout.strip().splitlines()[-1].split()
    return round(float(load), 1), round(float(peak), 1)


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
    rss = result["peak_rss_mb"]
    load = result["rss_model_loaded_mb"]
    print(f"  peak RSS during a store capture (64-prompt shards): {rss['n']} MB for {result['rss_prompts']['n']} "
          f"prompts, {rss['10n']} MB for {result['rss_prompts']['10n']} (model loaded: {load['n']} / "
          f"{load['10n']} MB)")


if __name__ == "__main__":
    print(json.dumps(bench_capture(sys.argv[1] if len(sys.argv) > 1 else "smollm2-135m-instruct")))
