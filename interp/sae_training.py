"""SAE training through SAELens, fed by interp's ActivationStore.

SAELens' ``SAETrainer`` does the optimization (its ``step`` seam: the same
loss, Adam, gradient clipping, LR and coefficient schedules and dead-feature
counter that its own runner uses); interp supplies the data (shuffled batches
streamed from an ``ActivationStore``), the initialization (random, i.e.
SAELens' own, or active-subspace), checkpoints that survive a kill, and the
measurements:

- dead features: features that never fire over a stated window of tokens,
  both during training (SAELens' counter, ``dead_window_tokens``) and on a
  held-out evaluation window (``evaluate``);
- L0 and explained variance ``1 - Σ‖x - x̂‖² / Σ‖x - x̄‖²``;
- the LM loss with the SAE reconstruction spliced into the model in place of
  the site's output (``spliced_lm_loss``: ``SAESplice(sae)`` and ``Zero()``
  through ``model.intervene``, the loss from ``interp.evaluation``).

Checkpoints hold no pickle: SAE weights in SAELens' format (safetensors +
cfg.json), optimizer moments and counters in safetensors, scalars in JSON.
A killed run started again with the same arguments resumes from the last
checkpoint, replays the LR schedule and skips the batches already seen, so it
ends where an uninterrupted run ends. The trained SAE is written with
``save_inference_model``, its metadata filled as SAELens expects
(``interp.sae.sae_metadata``: TransformerLens hook name, model name, context
size, BOS), and loads with ``sae_lens.SAE.load_from_disk`` or
``interp.sae.load_sae``.

Example:
    store = model.capture_to_store(texts, "acts/", "attn_out.3", "1:", chat=False)
    cfg = SAETrainConfig(kind="topk", d_sae=4608, k=32, init="active", total_tokens=300_000)
    summary = train_sae(store, "attn_out.3", "runs/active", cfg)
    sae = SAE.load_from_disk("runs/active/sae")
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .errors import InterpError
from .sae import RECOVERED_MIN_GAP, apply_metadata, sae_metadata  # noqa: F401 (RECOVERED_MIN_GAP re-exported)

KINDS = ("standard", "topk", "batchtopk", "jumprelu")
INITS = ("random", "active")


@dataclass
class SAETrainConfig:
    """Everything that defines a training run (saved with the run; a resume must match it).

    ``kind``: one of SAELens' architectures ``standard`` (ReLU + L1),
    ``topk``, ``batchtopk``, ``jumprelu``. ``init``: ``random`` (SAELens'
    initialization) or ``active``; ``d_active`` None means the measured k at
    ``rank_threshold`` of ``init_tokens`` activations. ``normalize`` scales
    inputs to mean norm √d during training (SAELens'
    ``expected_average_only_in``, folded into the weights at the end), so L1
    and JumpReLU coefficients mean the same at any activation scale.
    ``dead_window_tokens``: a feature is dead when it has not fired for this
    many training tokens (or all the tokens seen, when fewer). ``b_dec``:
    ``"mean"`` (the official code's decoder bias, the mean of the init batch)
    or ``"zero"`` (SAELens' default), the same for both inits; ``norm_search``:
    the official decoder-norm grid search on ``norm_search_tokens`` validation
    activations, for both inits (see ``interp.analyzers.sae_init.initialize``).
    """

    kind: str = "topk"
    d_sae: int = 4096
    k: int = 32
    l1_coefficient: float = 5.0
    l0_coefficient: float = 1.0
    init: str = "random"
    d_active: int | None = None
    rank_threshold: float = 0.99
    init_tokens: int = 16384
    normalize: bool = True
    lr: float = 3e-4
    batch_size: int = 1024
    total_tokens: int = 200_000
    dead_window_tokens: int = 50_000
    checkpoint_every_tokens: int = 50_000
    log_every_steps: int = 10
    seed: int = 0
    b_dec: str = "mean"
    norm_search: bool = True
    norm_search_tokens: int = 1024

    def check(self) -> None:
        if self.kind not in KINDS:
            raise InterpError(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.init not in INITS:
            raise InterpError(f"init must be 'random' or 'active', got {self.init!r}")
        for name in ("d_sae", "k", "batch_size", "total_tokens", "dead_window_tokens", "init_tokens"):
            if getattr(self, name) < 1:
                raise InterpError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.b_dec not in ("mean", "zero"):
            raise InterpError(f"b_dec must be 'mean' or 'zero', got {self.b_dec!r}")
        if self.total_tokens < self.batch_size:
            raise InterpError(f"total_tokens ({self.total_tokens}) is less than one batch ({self.batch_size})")


def build_sae(kind: str, d_in: int, d_sae: int, k: int = 32, l1_coefficient: float = 5.0,
              l0_coefficient: float = 1.0, seed: int = 0):
    """A SAELens training SAE of ``kind`` with SAELens' own (random) initialization, seeded."""
    import sae_lens

    cfgs = {"standard": (sae_lens.StandardTrainingSAE, sae_lens.StandardTrainingSAEConfig,
                         {"l1_coefficient": l1_coefficient}),
            "topk": (sae_lens.TopKTrainingSAE, sae_lens.TopKTrainingSAEConfig, {"k": k}),
            "batchtopk": (sae_lens.BatchTopKTrainingSAE, sae_lens.BatchTopKTrainingSAEConfig, {"k": k}),
            "jumprelu": (sae_lens.JumpReLUTrainingSAE, sae_lens.JumpReLUTrainingSAEConfig,
                         {"l0_coefficient": l0_coefficient})}
    if kind not in cfgs:
        raise InterpError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    cls, cfg_cls, extra = cfgs[kind]
    torch.manual_seed(seed)  # SAELens draws its init from the global generator
    return cls(cfg_cls(d_in=d_in, d_sae=d_sae, **extra))


def store_batches(store, site: str, batch_size: int, seed: int = 0, skip: int = 0) -> Iterator[torch.Tensor]:
    """Endless shuffled [batch_size, d] batches from a store; epoch e reshuffles with seed + e.

    ``skip`` drops that many batches first (to resume where a run stopped).
    """
    epoch, produced = 0, 0
    while True:
        any_batch = False
        for batch in store.iter_batches(site, batch_size, shuffle=True, seed=seed + epoch, drop_last=True):
            any_batch = True
            if produced >= skip:
                yield batch
            produced += 1
        if not any_batch:
            raise InterpError(f"the store has fewer than batch_size = {batch_size} tokens of {site}")
        epoch += 1


def _init_activations(store, site: str, n: int, seed: int) -> torch.Tensor:
    rows, have = [], 0
    for batch in store.iter_batches(site, batch_size=min(n, 8192), shuffle=True, seed=seed + 10_000):
        rows.append(batch)
        have += batch.shape[0]
        if have >= n:
            break
    return torch.cat(rows)[:n]


# ------------------------------------------------------------------ checkpoints (safetensors + JSON, no pickle)
def _save_checkpoint(trainer, path: Path, extra: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    trainer.sae.save_model(str(tmp))
    opt = trainer.optimizer.state_dict()
    tensors = {"act_freq_scores": trainer.act_freq_scores,
               "n_forward_passes_since_fired": trainer.n_forward_passes_since_fired}
    for i, st in opt["state"].items():
        for name, value in st.items():
            tensors[f"opt.{i}.{name}"] = torch.as_tensor(value).clone()
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / "trainer_state.safetensors"))
    state = {"n_training_samples": trainer.n_training_samples, "n_training_steps": trainer.n_training_steps,
             "n_frac_active_samples": trainer.n_frac_active_samples,
             "param_groups": opt["param_groups"], **extra}
    (tmp / "trainer_state.json").write_text(json.dumps(state))
    # swap in: a kill between these lines leaves either the old or the new checkpoint complete
    old = path.with_name(path.name + ".old")
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def _latest_checkpoint(path: Path) -> Path | None:
    for p in (path, path.with_name(path.name + ".old")):
        if (p / "trainer_state.json").exists() and (p / "trainer_state.safetensors").exists():
            return p
    return None


def _load_checkpoint(trainer, path: Path) -> dict:
    trainer.sae.load_weights_from_checkpoint(path)
    state = json.loads((path / "trainer_state.json").read_text())
    tensors = load_file(str(path / "trainer_state.safetensors"))
    opt_state: dict = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, i, name = key.split(".", 2)
            opt_state.setdefault(int(i), {})[name] = value
    trainer.optimizer.load_state_dict({"state": opt_state, "param_groups": state["param_groups"]})
    trainer.act_freq_scores = tensors["act_freq_scores"]
    trainer.n_forward_passes_since_fired = tensors["n_forward_passes_since_fired"]
    trainer.n_training_samples = state["n_training_samples"]
    trainer.n_training_steps = state["n_training_steps"]
    trainer.n_frac_active_samples = state["n_frac_active_samples"]
    # the LR and coefficient schedules are functions of the step count: replay them
    with warnings.catch_warnings():  # torch warns about scheduler steps before optimizer steps; intended here
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(trainer.n_training_steps):
            trainer.lr_scheduler.step()
            for sched in trainer.coefficient_schedulers.values():
                sched.step()
    return state


# ------------------------------------------------------------------ metrics
@torch.no_grad()
def explained_variance(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """1 - Σ‖x - x̂‖² / Σ‖x - x̄‖² over a batch of tokens.

    Example:
        >>> x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> explained_variance(x, x), explained_variance(x, x.mean(0).expand(2, 2))
        (1.0, 0.0)
    """
    x, x_hat = x.double(), x_hat.double()
    return float(1 - (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


@torch.no_grad()
def evaluate(sae, activations: torch.Tensor, batch_size: int = 4096) -> dict:
    """Explained variance, L0 and dead features (never fire on these tokens) of an SAE on held-out activations."""
    sae.eval()
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.bool)
    l0, err, n = 0.0, 0.0, activations.shape[0]
    for s in range(0, n, batch_size):
        x = activations[s:s + batch_size].float()
        acts = sae.encode(x)
        x_hat = sae.decode(acts)
        active = acts != 0
        fired |= active.any(0)
        l0 += float(active.sum())
        err += float((x.double() - x_hat.double()).pow(2).sum())
    total = float((activations.double() - activations.double().mean(0)).pow(2).sum())
    return {"explained_variance": 1 - err / total, "l0": l0 / n, "dead_fraction": float((~fired).float().mean()),
            "n_dead": int((~fired).sum()), "window_tokens": n}


@torch.no_grad()
def spliced_lm_loss(model, sae, site: str, texts: list[str], batch_size: int = 8) -> dict:
    """Next-token loss clean, with the SAE reconstruction in place of ``site``, and with ``site`` zeroed.

    ``interp.sae.spliced_loss`` with the site given: ``SAESplice(sae)`` and
    ``Zero()`` through ``model.intervene``, the loss from
    ``interp.evaluation.text_ce`` (float64 log-probabilities).
    ``loss_recovered`` = (zero - spliced) / (zero - clean): 1 when the
    reconstruction is as good as the real activations, 0 when no better than
    removing them; None with ``loss_recovered_note`` when zeroing does not hurt.

    Example:
        r = spliced_lm_loss(model, SAE.load_from_disk("runs/active/sae"), "attn_out.3", texts)
        r["clean"], r["spliced"], r["loss_recovered"]
    """
    from .sae import spliced_loss

    return spliced_loss(model, sae, texts, site=site, batch_size=batch_size)


# ------------------------------------------------------------------ training
def _dead_fraction(trainer, window_steps: int) -> tuple[float, int]:
    """(fraction of features that did not fire in the last min(window, steps seen) steps, that many steps)."""
    steps = min(window_steps, trainer.n_training_steps)
    if steps < 1:
        return float("nan"), 0
    return float((trainer.n_forward_passes_since_fired >= steps).float().mean()), steps


def train_sae(store, site: str, out_dir, cfg: SAETrainConfig, progress: bool = True,
              on_step: Callable[[int], None] | None = None, val_activations: torch.Tensor | None = None,
              metadata: dict | None = None) -> dict:
    """Train one SAE on ``site`` of ``store`` with SAELens' trainer; resume from ``out_dir`` if a run is there.

    Writes ``out_dir/sae`` (SAELens inference format), ``out_dir/checkpoint``
    and ``out_dir/summary.json``; returns the summary (config, init info,
    history of loss / explained variance / L0 / dead fraction per logged step,
    tokens/s). ``on_step(step)`` is called after each step (tests use it to
    interrupt a run). ``val_activations``: the validation activations the
    init's choices are made on (d_active, decoder norm); None makes them on the
    init batch. ``metadata``: SAELens metadata for the saved SAE
    (``interp.sae.sae_metadata(site, model, context_size=...)``); without it
    the SAE records the TransformerLens hook name, the store's model name and
    the store's positions only.
    """
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    from .sites import parse_site

    cfg.check()
    site = str(parse_site(site))
    if site not in store.sites:
        raise InterpError(f"site {site} is not in the store; it holds {', '.join(store.sites)}")
    # SAELens and TransformerLens hook by the TL name (blocks.1.hook_resid_post); "resid_post.1" hooked nothing there
    meta = sae_metadata(site, model_name=store.manifest.get("model"),
                        model_fingerprint=store.manifest.get("model_fingerprint"),
                        interp_positions=store.manifest.get("positions"))
    meta.update(metadata or {})
    if parse_site(meta["hook_name"]) != parse_site(site):
        raise InterpError(f"metadata hook_name {meta['hook_name']} is not the trained site {site}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "checkpoint"
    cfg_dict = dataclasses.asdict(cfg)
    start = _latest_checkpoint(ckpt)
    if start is not None:
        saved = json.loads((start / "trainer_state.json").read_text())
        if saved["config"] != cfg_dict or saved["site"] != site or saved["store_tokens"] != store.n_tokens:
            raise InterpError(f"{out} holds a run with another config, site or store; use another --out or "
                              f"delete {ckpt}")
    d_in = store.shard(0).tokens(site).shape[1]
    sae = build_sae(cfg.kind, d_in, cfg.d_sae, cfg.k, cfg.l1_coefficient, cfg.l0_coefficient, cfg.seed)
    init_info: dict = {"init": cfg.init}
    scaling_factor = None
    if start is None:
        from .analyzers.sae_init import initialize

        t0 = time.perf_counter()
        x = _init_activations(store, site, cfg.init_tokens, cfg.seed)
        v = val_activations.float() if val_activations is not None else None
        if cfg.normalize:
            scaling_factor = d_in ** 0.5 / float(x.norm(dim=1).mean())
            x = x * scaling_factor
            v = None if v is None else v * scaling_factor
        init_info.update(initialize(sae, cfg.init, x, v, cfg.d_active, cfg.rank_threshold, cfg.b_dec,
                                    cfg.norm_search, cfg.norm_search_tokens))
        init_info["seconds_with_loading"] = time.perf_counter() - t0
    steps_per_window = max(1, cfg.dead_window_tokens // cfg.batch_size)
    trainer_cfg = SAETrainerConfig(total_training_samples=cfg.total_tokens, train_batch_size_samples=cfg.batch_size,
                                   lr=cfg.lr, lr_end=cfg.lr, dead_feature_window=steps_per_window,
                                   feature_sampling_window=10**9, device="cpu")
    torch.manual_seed(cfg.seed)
    trainer = SAETrainer(cfg=trainer_cfg, sae=sae, data_provider=iter(()))
    history: list[dict] = []
    seconds = 0.0
    if start is not None:
        state = _load_checkpoint(trainer, start)
        history, seconds, init_info = state["history"], state["seconds"], state["init_info"]
        scaling_factor = state["scaling_factor"]
    trainer.activation_scaler.scaling_factor = scaling_factor
    trainer.data_provider = store_batches(store, site, cfg.batch_size, cfg.seed, skip=trainer.n_training_steps)
    total_steps = cfg.total_tokens // cfg.batch_size
    ckpt_steps = max(1, cfg.checkpoint_every_tokens // cfg.batch_size)
    bar = tqdm(total=total_steps, initial=trainer.n_training_steps, desc=f"SAE {cfg.kind}/{cfg.init}",
               disable=not progress)
    resumed_from = trainer.n_training_steps

    def extra() -> dict:
        return {"config": cfg_dict, "site": site, "store_tokens": store.n_tokens, "history": history,
                "seconds": seconds, "init_info": init_info,
                "scaling_factor": trainer.activation_scaler.scaling_factor}

    t_run = time.perf_counter()
    while trainer.n_training_steps < total_steps:
        t0 = time.perf_counter()
        output = trainer.step(next(trainer.data_provider))
        trainer.n_training_steps += 1
        seconds += time.perf_counter() - t0
        step = trainer.n_training_steps
        if step % cfg.log_every_steps == 0 or step == total_steps:
            with torch.no_grad():
                history.append({"step": step, "tokens": trainer.n_training_samples, "loss": float(output.loss),
                                "explained_variance": explained_variance(output.sae_in, output.sae_out),
                                "l0": float((output.feature_acts != 0).float().sum(-1).mean()),
                                "dead_fraction": _dead_fraction(trainer, steps_per_window)[0]})
            bar.set_postfix(ev=f"{history[-1]['explained_variance']:.3f}", l0=f"{history[-1]['l0']:.1f}",
                            dead=f"{history[-1]['dead_fraction']:.3f}")
        if step % ckpt_steps == 0 and step < total_steps:
            _save_checkpoint(trainer, ckpt, extra())
        bar.update(1)
        if on_step is not None:
            on_step(step)
    bar.close()
    trainer.set_final_sae_metadata()
    if trainer.activation_scaler.scaling_factor is not None:  # the saved SAE takes raw activations
        sae.fold_activation_norm_scaling_factor(trainer.activation_scaler.scaling_factor)
        trainer.activation_scaler.scaling_factor = None
    apply_metadata(sae, meta)
    sae.save_inference_model(str(out / "sae"))
    _save_checkpoint(trainer, ckpt, extra())
    dead_train, window_steps = _dead_fraction(trainer, steps_per_window)
    summary = {"config": cfg_dict, "site": site, "init_info": init_info, "history": history,
               "dead_window_tokens": window_steps * cfg.batch_size,
               "dead_fraction_train": dead_train,
               "train_seconds": seconds, "tokens_per_second": cfg.total_tokens / max(seconds, 1e-9),
               "steps_this_call": trainer.n_training_steps - resumed_from,
               "wall_seconds_this_call": time.perf_counter() - t_run, "sae_path": str(out / "sae")}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
