"""How well two prompt sets separate at each layer, as one small experiment.

Not a paper's method but a quick look used beside them (is "harmful vs harmless" linearly readable, and
from which layer?). Its inputs are any two prompt files, so it stays apart from the harmfulness
experiment instead of adding unrelated knobs to that one's ``Config``.

1. data: two prompt files (default: the harmful and harmless demo requests in ``data/``);
2. capture: ``resid_post`` (or another site) of every layer at one position (default the last prompt token);
3. fit + evaluate: per layer, cross-validated accuracy of a standardized logistic-regression probe and
   d' along the difference of means fitted on the training folds (``interp.analyzers.separation``), a
   description over all prompts; and the protocol's number: each file split by prompt into train /
   validation / test (``interp.protocol.split_groups``), the layer chosen by validation accuracy, the
   probe's test accuracy at that layer read once;
4. report: per-layer rows, the protocol block, the test accuracy at the validation-chosen layer as headline,
   the two per-layer figures.

Example:
    from interp.experiments import separation
    result = separation.run(model, separation.Config(folds=3))
    result.report["best_layer"], result.report["per_layer"][0]["cv_accuracy"]
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..analyzers.separation import chosen_layer_test, layer_separation
from ..data.prompts import DATA_DIR, read_prompt_file
from ..errors import InterpError
from ..positions import check_spec, describe
from ..protocol import protocol_block, split_groups
from ..report import Headline, Result, Stopwatch, write_report
from ..sites import SITE_NAMES

__all__ = ["Config", "run", "check_config"]


@dataclass
class Config:
    """Settings of the per-layer separation; defaults are those of ``interp separation``."""

    a: str = str(DATA_DIR / "demo_harmful.txt")  #: first prompt file (one prompt per line, or JSONL with "prompt")
    b: str = str(DATA_DIR / "demo_harmless.txt")  #: second prompt file
    site: str = "resid_post"  #: site name read at every layer
    position: str = "last"  #: token position read in each prompt
    folds: int = 5  #: cross-validation folds (stratified, shuffled)
    seed: int = 0  #: seed of the fold shuffle and of the train / validation / test split
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)  #: train / validation / test shares of each file
    batch_size: int = 8  #: prompts per forward


def check_config(config: Config) -> tuple[list[str], list[str]]:
    """Validate the settings and read both prompt files (before any model is loaded); return the prompts."""
    if config.site not in SITE_NAMES:
        raise InterpError(f"unknown site {config.site!r}; choose from {', '.join(SITE_NAMES)}")
    check_spec(config.position)
    if config.folds < 2:
        raise InterpError(f"folds must be >= 2, got {config.folds}")
    if config.batch_size < 1:
        raise InterpError(f"batch_size must be >= 1, got {config.batch_size}")
    a, b = read_prompt_file(config.a), read_prompt_file(config.b)
    if len(config.fractions) != 3 or min(config.fractions) <= 0:
        raise InterpError(f"fractions must be three positive train / validation / test shares, got {config.fractions}")
    if min(len(a), len(b)) < max(config.folds, 3):
        raise InterpError(f"need at least {config.folds} prompts per file for {config.folds}-fold cross-validation, "
                          f"got {len(a)} and {len(b)}; add prompts or lower folds")
    return a, b


def run(model, config: Config | None = None, out: str | Path | None = None) -> Result:
    """Per-layer probe accuracy and d' between the two prompt sets; with ``out``, write the report there."""
    from .. import plots

    cfg = config or Config()
    sw = Stopwatch()

    # data
    a, b = check_config(cfg)

    # capture: the site at every layer, one position per prompt
    with sw("capture"):
        acts_a = model.capture(a, cfg.site, cfg.position, batch_size=cfg.batch_size)
        acts_b = model.capture(b, cfg.site, cfg.position, batch_size=cfg.batch_size)
        xa, xb = acts_a.stack(cfg.site), acts_b.stack(cfg.site)  # [layers, n, positions, d]
    if xa.shape[2] != 1 or xb.shape[2] != 1:
        raise InterpError(f"position {cfg.position!r} selects {xa.shape[2]} tokens; separation reads one token per "
                          f"prompt (e.g. 'last' or 'instruction_last')")

    # fit + evaluate: cross-validated probe and d' per layer
    with sw("fit"):
        rows = layer_separation(xa[:, :, 0], xb[:, :, 0], folds=cfg.folds, seed=cfg.seed)
        # the protocol: split each file by prompt, choose the layer on validation, read test once
        sa = split_groups(range(len(a)), cfg.fractions, cfg.seed, unit="prompt")
        sb = split_groups(range(len(b)), cfg.fractions, cfg.seed, unit="prompt")
        held = chosen_layer_test(xa[:, :, 0], xb[:, :, 0], sa, sb)

    # report
    best = rows[held["layer"]]
    protocol = protocol_block(
        type(sa)([*sa.train, *(len(a) + i for i in sb.train)], [*sa.val, *(len(a) + i for i in sb.val)],
                 [*sa.test, *(len(a) + i for i in sb.test)], "prompt", cfg.seed),
        choices="layer: best validation accuracy of a probe fitted on train", cv_rows="descriptive, all prompts")
    report = {"model": model.describe(), "site": cfg.site, "position": cfg.position,
              "sets": {"a": cfg.a, "b": cfg.b, "n_a": len(a), "n_b": len(b)}, "folds": cfg.folds,
              "per_layer": rows, "best_layer": held["layer"], "val_accuracy": held["val_accuracy"],
              "test_accuracy": held["test_accuracy"], "protocol": protocol, "seconds": round(sw.total, 1)}
    split = (f"{cfg.folds}-fold cross-validation over {len(a)} + {len(b)} prompts "
             f"({Path(cfg.a).name} vs {Path(cfg.b).name})")
    test_split = f"test: {len(sa.test)} + {len(sb.test)} prompts (seed {cfg.seed}); layer chosen on validation"
    headlines = [Headline(f"layer {best['layer']} (chosen on validation): probe accuracy", held["test_accuracy"],
                          test_split, note=f"validation accuracy {held['val_accuracy'][best['layer']]:.3f}; "
                                       f"cross-validated over all prompts {best['cv_accuracy']:.3f}, d' "
                                       f"{best['dprime']:.2f}"),
                 Headline("probe accuracy, mean over layers", sum(r["cv_accuracy"] for r in rows) / len(rows), split)]
    where = f"{cfg.site}, {describe(cfg.position)} token"
    result = Result("separation", report, figures=plots.separation_per_layer(rows, where), headlines=headlines,
                    conclusion=f"{Path(cfg.a).name} vs {Path(cfg.b).name}: layer {best['layer']} chosen on "
                               f"validation; test accuracy {held['test_accuracy']:.3f} (cross-validated over all "
                               f"prompts {best['cv_accuracy']:.3f}, d' {best['dprime']:.2f}).",
                    config=cfg, timing=dict(sw.seconds, total_s=sw.total), tables={"per layer": rows},
                    title=f"Separation per layer: {model.name}", protocol=protocol)
    if out is not None:
        write_report(result, out, model=model)
    return result
