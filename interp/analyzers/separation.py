"""How well two prompt sets separate at each layer.

Two numbers per layer: the cross-validated accuracy of a logistic-regression
probe (standardized features), and d', the distance between the class means
along their difference-of-means direction in units of the pooled standard
deviation (the direction is fitted on training folds only, so d' is honest).

Example:
    >>> import torch
    >>> a, b = torch.randn(3, 20, 8) + 2, torch.randn(3, 20, 8)
    >>> rows = layer_separation(a, b, folds=4)
    >>> rows[0]["cv_accuracy"] > 0.9
    True
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import InterpError


def _dprime(xa: np.ndarray, xb: np.ndarray, train_a: np.ndarray, train_b: np.ndarray) -> float:
    direction = xa[train_a].mean(0) - xb[train_b].mean(0)
    norm = np.linalg.norm(direction)
    if norm == 0:
        return 0.0
    direction /= norm
    pa, pb = xa[~train_a] @ direction, xb[~train_b] @ direction
    pooled = np.sqrt((pa.var(ddof=1) + pb.var(ddof=1)) / 2) if min(len(pa), len(pb)) > 1 else np.nan
    return float((pa.mean() - pb.mean()) / pooled) if pooled and np.isfinite(pooled) else float("nan")


def layer_separation(a: torch.Tensor, b: torch.Tensor, folds: int = 5, seed: int = 0) -> list[dict]:
    """Separation of ``a`` [layers, n_a, d] from ``b`` [layers, n_b, d], one dict per layer."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if a.dim() != 3 or b.dim() != 3 or a.shape[0] != b.shape[0] or a.shape[2] != b.shape[2]:
        raise InterpError(f"expected two tensors [layers, n, d] with equal layers and d, got {tuple(a.shape)} "
                          f"and {tuple(b.shape)}")
    if min(a.shape[1], b.shape[1]) < folds:
        raise InterpError(f"need at least {folds} examples per set for {folds}-fold cross-validation, got "
                          f"{a.shape[1]} and {b.shape[1]}")
    y = np.r_[np.ones(a.shape[1]), np.zeros(b.shape[1])]
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    rows = []
    for layer in range(a.shape[0]):
        xa, xb = a[layer].double().numpy(), b[layer].double().numpy()
        x = np.r_[xa, xb]
        probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        acc = cross_val_score(probe, x, y, cv=cv).mean()
        dps = []
        for train, _ in cv.split(x, y):
            mask = np.zeros(len(y), bool)
            mask[train] = True
            dps.append(_dprime(xa, xb, mask[: len(xa)], mask[len(xa):]))
        mean_diff = xa.mean(0) - xb.mean(0)
        rows.append({"layer": layer, "cv_accuracy": float(acc), "dprime": float(np.nanmean(dps)),
                     "mean_diff_norm": float(np.linalg.norm(mean_diff))})
    return rows


def chosen_layer_test(a: torch.Tensor, b: torch.Tensor, split_a, split_b) -> dict:
    """Choose the layer on validation, read test once: a standardized logistic probe per layer fitted on the train
    prompts of ``a`` and ``b`` ([layers, n, d]); the layer with the best validation accuracy (ties: the earlier) is
    scored on the test prompts. ``split_a`` / ``split_b`` have ``train`` / ``val`` / ``test`` index lists.

    Example:
        >>> from interp.protocol import split_groups
        >>> g = torch.Generator().manual_seed(0)
        >>> a, b = torch.randn(2, 20, 8, generator=g) + 2, torch.randn(2, 20, 8, generator=g)
        >>> s = split_groups(range(20), seed=0)
        >>> chosen_layer_test(a, b, s, s)["test_accuracy"] > 0.9
        True
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def part(layer, name):
        xa, xb = a[layer][getattr(split_a, name)], b[layer][getattr(split_b, name)]
        return torch.cat([xa, xb]).double().numpy(), np.r_[np.ones(len(xa)), np.zeros(len(xb))]

    val_acc, probes = [], []
    for layer in range(a.shape[0]):
        probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(*part(layer, "train"))
        val_acc.append(float(probe.score(*part(layer, "val"))))
        probes.append(probe)
    best = int(np.argmax(val_acc))
    return {"layer": best, "val_accuracy": val_acc, "test_accuracy": float(probes[best].score(*part(best, "test")))}
