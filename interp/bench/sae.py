"""``interp sae bench``: SAE training throughput, interp's store-fed loop vs SAELens' own fit loop.

On the same activations of one site: tokens/s of ``train_sae`` (batches
streamed from the ``ActivationStore``, metrics, checkpoints) and of SAELens'
``SAETrainer.fit`` on an in-memory iterator, plus the one-off cost of the
active-subspace initialization. The activations come from the SAE
experiment's own data and capture steps (``interp.experiments.sae``).

Example:
    from interp.experiments.sae import Config
    r = bench_sae(model, Config(layer=6, d_sae=2304, tokens=20480), "runs/bench")
    r["interp_tokens_per_s"], r["saelens_fit_tokens_per_s"]
"""
from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path
from typing import Iterator

import torch


def benchmark(store, site: str, cfg, out_dir) -> dict:
    """Training tokens/s through interp (``train_sae``: store streaming, metrics, checkpoints) vs SAELens'
    own ``SAETrainer.fit`` loop on the same activations held in memory, and the active-init one-off cost.

    ``cfg`` is an ``interp.sae_training.SAETrainConfig``; ``out_dir`` is emptied and holds the timed run.
    """
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    from ..analyzers.sae_init import init_sae
    from ..sae_training import build_sae, train_sae

    out = Path(out_dir)
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    ours = train_sae(store, site, out / "interp", dataclasses.replace(cfg, init="random", normalize=False),
                     progress=False)
    interp_wall = time.perf_counter() - t0
    x = torch.cat(list(store.iter_batches(site, cfg.batch_size, shuffle=True, seed=cfg.seed, drop_last=True)))
    n_batches = x.shape[0] // cfg.batch_size

    def cycle() -> Iterator[torch.Tensor]:
        i = 0
        while True:
            j = i % n_batches
            yield x[j * cfg.batch_size:(j + 1) * cfg.batch_size]
            i += 1

    sae = build_sae(cfg.kind, x.shape[1], cfg.d_sae, cfg.k, cfg.l1_coefficient, cfg.l0_coefficient, cfg.seed)
    tcfg = SAETrainerConfig(total_training_samples=cfg.total_tokens, train_batch_size_samples=cfg.batch_size,
                            lr=cfg.lr, lr_end=cfg.lr, device="cpu")
    t0 = time.perf_counter()
    SAETrainer(cfg=tcfg, sae=sae, data_provider=cycle()).fit()
    saelens_wall = time.perf_counter() - t0
    sae2 = build_sae(cfg.kind, x.shape[1], cfg.d_sae, cfg.k, cfg.l1_coefficient, cfg.l0_coefficient, cfg.seed)
    init = init_sae(sae2, x[:cfg.init_tokens], cfg.d_active, cfg.rank_threshold, cfg.seed)
    return {"tokens": cfg.total_tokens, "interp_tokens_per_s": cfg.total_tokens / interp_wall,
            "interp_step_tokens_per_s": ours["tokens_per_second"],
            "saelens_fit_tokens_per_s": cfg.total_tokens / saelens_wall,
            "active_init_seconds": init["seconds"], "active_init_d_active": init["d_active"],
            "active_init_tokens": min(cfg.init_tokens, x.shape[0])}


def bench_sae(model, config=None, out=None) -> dict:
    """Capture the experiment's training store under ``out`` (reused if there) and time training on it.

    Writes ``out/bench.json``; returns the numbers plus ``kind``, ``d_sae``, ``batch_size`` and ``site``.
    """
    import json
    import tempfile

    from ..experiments.sae import Config, capture_stores, texts_for, train_config

    config = config or Config()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(out) if out is not None else Path(tmp)
        site, texts, _ = texts_for(model, config)
        train_store = capture_stores(model, site, {"train": texts["train"]}, folder)["train"]
        cfg = train_config(config, model.d_model)
        r = benchmark(train_store, site, cfg, folder / "bench")
        r.update(kind=cfg.kind, d_sae=cfg.d_sae, batch_size=cfg.batch_size, site=site)
        if out is not None:
            (folder / "bench.json").write_text(json.dumps(r, indent=1))
    return r


def print_table(r: dict) -> None:
    """The benchmark's numbers as a few readable lines."""
    print(f"{r['kind']} d_sae {r['d_sae']}, batch {r['batch_size']}, {r['tokens']} tokens of {r['site']}:")
    print(f"  interp train_sae (store -> SAETrainer.step, metrics, checkpoints): {r['interp_tokens_per_s']:.0f} "
          f"tokens/s wall ({r['interp_step_tokens_per_s']:.0f} in the steps alone)")
    print(f"  SAELens SAETrainer.fit on an in-memory iterator:               {r['saelens_fit_tokens_per_s']:.0f} "
          f"tokens/s")
    print(f"  active-subspace init: {r['active_init_seconds']:.2f} s once (SVD of {r['active_init_tokens']} tokens, "
          f"d_active {r['active_init_d_active']})")
