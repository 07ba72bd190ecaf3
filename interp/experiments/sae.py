"""Active-subspace SAE initialization vs random (arXiv 2508.16929, ``shared/methods.md`` §5) as one experiment.

1. data: documentation prose (``interp.data.corpus``), split three ways by
   passage (``interp.protocol.split_groups``, unit "passage"): training,
   validation and test passages;
2. capture: the site (default ``attn_out``) at every token but the first,
   into a training, a validation and a test ``ActivationStore``;
3. fit: one SAE per initialization through SAELens' trainer
   (``interp.sae_training.train_sae``: same data order, budget and seed;
   random = SAELens' own random decoder, active = its rows moved into the
   top principal subspace; both with b_dec = the training mean, the
   decoder-norm search and encoder = decoderᵀ,
   ``interp.analyzers.sae_init.initialize``). Every choice (d_active, the
   decoder norm) is made on the validation activations;
4. intervene: the SAE's reconstruction spliced in place of the site
   (``Splice(sae)``), and the site zeroed (``Zero()``), through
   ``model.intervene``;
5. evaluate, once, on the test split: dead features (never fire on the test
   window), explained variance and L0 on test activations, and the
   next-token loss clean / spliced / zero-ablated on the first test passages
   (``interp.evaluation.text_ce``);
6. report: dead fraction, explained variance, L0 and LM loss per init, the
   protocol block, the training curves, and each run's ``<init>/result.json``;
   ``seeds`` repeats it all per seed and reports mean ± spread.

Training writes its checkpoints and the SAE (SAELens format) under
``out/<init>/`` so that a killed run resumes; without ``out`` they live in a
temporary folder that is deleted at the end.

Example:
    from interp.experiments import sae
    result = sae.run(model, sae.Config(layer=1, d_sae=1152, tokens=8192, batch_size=512, passages=48),
                     out="runs/sae_l1")
    result.report["dead_fraction"]   # {"active": ..., "random": ...}
"""
from __future__ import annotations

import dataclasses
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..data.corpus import passages_for
from ..errors import InterpError
from ..protocol import protocol_block, split_groups
from ..report import Headline, Result, Stopwatch, write_report
from ..sae_training import INITS, KINDS, SAETrainConfig, evaluate, spliced_lm_loss, train_sae
from ..sae import sae_metadata
from ..sites import SITE_NAMES, Site

__all__ = ["Config", "run", "check_config", "texts_for", "capture_stores", "train_config", "PAPER", "TARGETS"]

#: What the paper reports (attention-output SAE, 1M features, Llama-3.1-8B).
PAPER = {"dead_random": "0.87", "dead_active": "< 0.01"}
#: This project's targets at equal budget (docs/rank_and_sae.md).
TARGETS = {"dead_ratio": "active ≤ 0.5 × random", "ev": "within 0.01 of random"}


@dataclass
class Config:
    """Settings of the SAE training and init comparison; defaults are those of ``interp sae``."""

    site: str = "attn_out"  #: site name the SAE reads and is spliced into
    layer: int = 6  #: layer of the site (docs/rank_and_sae.md measured layer 6 of SmolLM2-135M)
    inits: tuple[str, ...] = ("random", "active")  #: initializations trained, in this order, on the same data
    kind: str = "topk"  #: SAELens architecture: standard, topk, batchtopk or jumprelu
    d_sae: int | None = None  #: dictionary size; None means 8 × d_model
    k: int = 32  #: active features for topk / batchtopk
    l1: float = 5.0  #: L1 coefficient for standard
    l0: float = 1.0  #: L0 coefficient for jumprelu
    d_active: int | None = None  #: active-subspace size; None means the measured k99 of the validation activations
    rank_threshold: float = 0.99  #: variance threshold of that measured k
    init_tokens: int = 16384  #: activations the init (and the input normalization) is computed from
    normalize: bool = True  #: scale inputs to mean norm √d during training (folded into the saved SAE)
    b_dec: str = "mean"  #: decoder bias at init for both inits: "mean" of the init batch (official code) or "zero"
    norm_search: bool = True  #: the official decoder-norm grid search (on validation), for both inits
    norm_search_tokens: int = 1024  #: validation tokens the decoder-norm search is scored on
    tokens: int = 200_000  #: training tokens
    passages: int | None = None  #: training passages captured; None means enough for ``tokens`` (one epoch at most)
    val_passages: int = 64  #: validation passages: d_active and the decoder norm are chosen on them
    eval_passages: int = 64  #: test passages for the dead-feature, explained-variance and L0 evaluation
    lm_passages: int = 16  #: test passages (the first of the eval passages) for the spliced LM loss
    max_tokens: int = 128  #: tokens per passage
    batch_size: int = 1024  #: SAE batch in tokens
    lr: float = 3e-4  #: learning rate (constant)
    dead_window: int = 50_000  #: training tokens without firing that make a feature dead (SAELens' counter)
    checkpoint_every: int = 50_000  #: training tokens between checkpoints
    log_every_steps: int = 10  #: training steps between history rows (the training curves)
    seed: int = 0  #: seed for the passage split, the SAE init and the data order
    seeds: tuple[int, ...] | None = None  #: run once per seed and report mean ± spread of the headlines
    progress: bool = True  #: show progress bars


def check_config(config: Config, n_layers: int | None = None) -> Config:
    """Validate the site, layer, kind and inits before any model or corpus is loaded; return the config.

    Example:
        >>> check_config(Config(layer=3), n_layers=30).layer
        3
    """
    if config.site not in SITE_NAMES:
        raise InterpError(f"unknown site name {config.site!r}; choose from {', '.join(SITE_NAMES)}")
    if isinstance(config.layer, bool) or not isinstance(config.layer, int) or config.layer < 0 or (
            n_layers is not None and config.layer >= n_layers):
        top = f"0..{n_layers - 1}" if n_layers else "a layer index >= 0"
        raise InterpError(f"layer must be in {top}, got {config.layer!r}")
    if config.kind not in KINDS:
        raise InterpError(f"kind must be one of {', '.join(KINDS)}, got {config.kind!r}")
    bad = [i for i in config.inits if i not in INITS]
    if bad or not config.inits or len(set(config.inits)) != len(config.inits):
        raise InterpError(f"inits must be distinct values among {', '.join(INITS)}, got {list(config.inits)}")
    if config.b_dec not in ("mean", "zero"):
        raise InterpError(f"b_dec must be 'mean' or 'zero', got {config.b_dec!r}")
    if config.seeds is not None and (not config.seeds or len(set(config.seeds)) != len(config.seeds)):
        raise InterpError(f"seeds must be distinct integers, got {config.seeds}")
    for name in ("tokens", "val_passages", "eval_passages", "lm_passages", "max_tokens", "batch_size",
                 "dead_window", "checkpoint_every", "norm_search_tokens"):
        if getattr(config, name) < 1:
            raise InterpError(f"{name} must be >= 1, got {getattr(config, name)}")
    if config.max_tokens < 2:
        raise InterpError("max_tokens must be >= 2 (the first token of each passage is not captured)")
    if config.lm_passages > config.eval_passages:
        raise InterpError(f"lm_passages ({config.lm_passages}) must not exceed eval_passages ({config.eval_passages})")
    return config


def train_config(config: Config, d_model: int, init: str | None = None) -> SAETrainConfig:
    """The ``SAETrainConfig`` of one run (saved with its checkpoints; a resume must match it)."""
    return SAETrainConfig(kind=config.kind, d_sae=config.d_sae or 8 * d_model, k=config.k, l1_coefficient=config.l1,
                          l0_coefficient=config.l0, init=init or config.inits[0], d_active=config.d_active,
                          rank_threshold=config.rank_threshold, init_tokens=config.init_tokens,
                          normalize=config.normalize, b_dec=config.b_dec, norm_search=config.norm_search,
                          norm_search_tokens=config.norm_search_tokens, lr=config.lr, batch_size=config.batch_size,
                          total_tokens=config.tokens, dead_window_tokens=config.dead_window,
                          checkpoint_every_tokens=config.checkpoint_every, log_every_steps=config.log_every_steps,
                          seed=config.seed)


def texts_for(model, config: Config):
    """(site, {"train", "val", "test"} passages, Splits): the passages split three ways by passage."""
    site = str(Site(config.site, config.layer))
    n_train = config.passages or -(-config.tokens // (config.max_tokens - 1))
    n = n_train + config.val_passages + config.eval_passages
    texts = passages_for(model.tokenizer, n, config.max_tokens)
    splits = split_groups(range(len(texts)), (n_train / n, config.val_passages / n, config.eval_passages / n),
                          config.seed, unit="passage")
    return site, {part: splits.take(texts, part) for part in ("train", "val", "test")}, splits


def capture_stores(model, site: str, texts: dict, folder: Path, progress: bool = True) -> dict:
    """The site at every token but the first, into ``folder/store_<split>`` per split (resumable)."""
    kw = dict(chat=False, shard_size=128, batch_size=8, progress=progress)
    names = {"train": "store_train", "val": "store_val", "test": "store_eval"}
    return {part: model.capture_to_store(t, folder / names[part], site, "1:", **kw)
            for part, t in texts.items() if t}


def run(model, config: Config | None = None, out=None) -> Result:
    """Train one SAE per init on the same activations, choose on validation, evaluate once on test, report."""
    from sae_lens import SAE

    config = check_config(config or Config(), model.n_layers)
    if config.seeds:
        from ..protocol import seed_sweep

        return seed_sweep(run, model, config, out)
    sw = Stopwatch()
    runs: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(out) if out is not None else Path(tmp)
        # data
        with sw("data"):
            site, texts, splits = texts_for(model, config)
            lm_texts = texts["test"][:config.lm_passages]
        # capture
        with sw("capture"):
            stores = capture_stores(model, site, texts, folder, config.progress)
            val_acts = stores["val"].load().tokens(site)
        for init in config.inits:
            cfg = train_config(config, model.d_model, init)
            # fit (choices on validation)
            with sw(f"train {init}"):
                summary = train_sae(stores["train"], site, folder / init, cfg, progress=config.progress,
                                    val_activations=val_acts, metadata=sae_metadata(
                                        site, model, context_size=config.max_tokens, seqpos_slice=(1, None),
                                        dataset_path="interp.data.corpus"))
                sae = SAE.load_from_disk(folder / init / "sae")
            runs[init] = {"init": init, "site": site, "config": dataclasses.asdict(cfg),
                          "init_info": summary["init_info"], "train_tokens_in_store": stores["train"].n_tokens,
                          "dead_fraction_train": summary["dead_fraction_train"],
                          "dead_window_tokens_train": summary["dead_window_tokens"],
                          "tokens_per_second": summary["tokens_per_second"], "history": summary["history"]}
            runs[init]["sae"] = sae
        # intervene + evaluate, once, on test: reconstruction, and the LM loss with Splice(sae) / Zero()
        test_acts = stores["test"].load().tokens(site)
        for init in config.inits:
            with sw(f"evaluate {init}"):
                sae = runs[init].pop("sae")
                runs[init]["eval"] = evaluate(sae, test_acts)
                runs[init]["lm_loss"] = spliced_lm_loss(model, sae, site, lm_texts)
        n_eval_tokens = stores["test"].n_tokens
    # report
    cfg = train_config(config, model.d_model)
    inits = [i for i in ("active", "random") if i in runs]  # the report's key order since the first version
    first = runs[inits[0]]
    report = {
        "model": model.describe(), "site": site, "kind": cfg.kind, "d_sae": cfg.d_sae,
        "train_tokens": cfg.total_tokens, "train_tokens_in_store": first["train_tokens_in_store"],
        "dead_definition": f"a feature that never fires on the {n_eval_tokens} test tokens",
        "eval_tokens": n_eval_tokens, "split": "test",
        "dead_fraction": {i: runs[i]["eval"]["dead_fraction"] for i in inits},
        "explained_variance": {i: runs[i]["eval"]["explained_variance"] for i in inits},
        "l0": {i: runs[i]["eval"]["l0"] for i in inits},
        "dead_fraction_train": {i: runs[i]["dead_fraction_train"] for i in inits},
        "dead_window_tokens_train": first["dead_window_tokens_train"],
        "lm_loss": {i: runs[i]["lm_loss"] for i in inits},
        "d_active": runs["active"]["init_info"]["d_active"] if "active" in runs else None,
        "decoder_norm": {i: runs[i]["init_info"].get("decoder_norm") for i in inits},
        "b_dec": cfg.b_dec,
        "active_init_seconds": runs["active"]["init_info"]["seconds"] if "active" in runs else None,
        "tokens_per_second": {i: runs[i]["tokens_per_second"] for i in inits},
    }
    protocol = protocol_block(splits, choices=("d_active (k99 of the validation activations) and the decoder norm "
                                               "(grid search on validation reconstruction error), per init"),
                              n_val_tokens=int(val_acts.shape[0]), n_test_tokens=n_eval_tokens)
    return _result(model, config, out, report, runs, n_eval_tokens, sw, protocol)


def _result(model, config: Config, out, report: dict, runs: dict, n_eval: int, sw: Stopwatch,
            protocol: dict | None = None) -> Result:
    from .. import plots

    inits = list(report["dead_fraction"])
    held, train = f"test ({n_eval} tokens)", f"training (last {report['dead_window_tokens_train']} tokens)"
    lm_split = f"test, first LM passages ({next(iter(report['lm_loss'].values()))['n_tokens']} tokens)"
    headlines = []
    for i in inits:
        paper = PAPER.get(f"dead_{i}")
        headlines += [
            Headline(f"dead fraction, {i} init", report["dead_fraction"][i], held, paper=paper,
                     note="never fires on the test window"),
            Headline(f"dead fraction in training, {i} init", report["dead_fraction_train"][i], train, paper=paper,
                     note="SAELens' counter"),
            Headline(f"explained variance, {i} init", report["explained_variance"][i], held),
            Headline(f"L0, {i} init", report["l0"][i], held),
            Headline(f"LM loss spliced, {i} init (nats/token)", report["lm_loss"][i]["spliced"], lm_split,
                     note=f"clean {report['lm_loss'][i]['clean']:.3f}, zero-ablated "
                          f"{report['lm_loss'][i]['zero_ablated']:.3f}, recovered "
                          f"{recovered_text(report['lm_loss'][i])}")]
    conclusion = ""
    if {"active", "random"} <= set(inits):
        dead, ev = report["dead_fraction"], report["explained_variance"]
        met = dead["active"] <= 0.5 * dead["random"]
        ratio = dead["active"] / dead["random"] if dead["random"] > 0 else None  # undefined when none is dead
        headlines.append(Headline("dead fraction, active / random", ratio, held,
                                  target=TARGETS["dead_ratio"], met=met))
        headlines.append(Headline("explained variance, active − random", ev["active"] - ev["random"], held,
                                  target=TARGETS["ev"], met=abs(ev["active"] - ev["random"]) <= 0.01))
        conclusion = (f"With the same data, budget and seed, active-subspace init (d_active {report['d_active']}) "
                      f"leaves {dead['active']:.3f} of {report['d_sae']} features dead on the test window against "
                      f"{dead['random']:.3f} with random init ({'meets' if met else 'misses'} the target of at most "
                      f"half), with explained variance {ev['active']:.3f} vs {ev['random']:.3f}.")
    figures = plots.sae_training_curves({i: runs[i]["history"] for i in inits})
    rows = [{"init": i, "dead (test)": report["dead_fraction"][i], "dead (training)": report["dead_fraction_train"][i],
             "explained variance": report["explained_variance"][i], "L0": report["l0"][i],
             "LM loss clean": report["lm_loss"][i]["clean"], "LM loss spliced": report["lm_loss"][i]["spliced"],
             "LM loss zero-ablated": report["lm_loss"][i]["zero_ablated"],
             "tokens/s": report["tokens_per_second"][i]} for i in inits]
    artifacts = {f"{i}/result.json": _json_writer(runs[i]) for i in runs}
    result = Result("sae", report, figures=figures, headlines=headlines, conclusion=conclusion, config=config,
                    timing=dict(sw.seconds, total_s=sw.total), artifacts=artifacts, tables={"per init": rows},
                    title=f"SAE init: {model.name} {report['site']}", protocol=protocol)
    if out is not None:
        write_report(result, out, model=model)
    return result


def recovered_text(lm: dict) -> str:
    """The fraction of loss recovered as text, or why it is undefined."""
    if lm.get("loss_recovered") is None:
        return lm.get("loss_recovered_note", "undefined")
    return f"{lm['loss_recovered']:.3f}"


def _json_writer(obj: dict):
    def write(path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(obj, indent=1))
    return write
