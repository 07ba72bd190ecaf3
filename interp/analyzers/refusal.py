"""Refusal direction (Arditi et al. 2024): the difference-of-means estimator behind every candidate.

``DiffOfMeans`` is a scikit-learn transformer on arrays (no model inside):
``fit(X, y)`` keeps ``direction_`` = mean(X | y = positive) − mean(X | every
other label), accumulated in float64 and left unnormalized, as the paper
does. ``X`` may carry extra leading feature axes: [examples, layers,
positions, d] gives one candidate per layer × position in one fit.
``transform`` projects onto the unit direction(s).

``candidate_directions`` applies it to two ``Activations`` captures (harmful
and harmless). Scoring the candidates needs the model, so it lives with the
experiment (``interp.experiments.refusal``).

Example:
    >>> import numpy as np
    >>> X = np.array([[2.0, 0.0], [4.0, 0.0], [0.0, 1.0], [0.0, 3.0]])
    >>> est = DiffOfMeans().fit(X, [1, 1, 0, 0])
    >>> est.direction_.tolist()
    [3.0, -2.0]
    >>> est.transform(X[:1]).round(3).tolist()
    [[1.664]]
"""
from __future__ import annotations

import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from ..errors import InterpError


def _numpy(X):
    """torch input as numpy (scikit-learn's validation then checks shape, dtype and values)."""
    if not isinstance(X, torch.Tensor):
        return X
    X = X.detach().cpu()
    # numpy has no bfloat16: widen half-precision captures (exactly) before the float64 validation
    return (X.float() if X.is_floating_point() and X.element_size() < 4 else X).numpy()


def _tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a if a.flags.writeable else a.copy())


def _validated(est, X, **kwargs) -> np.ndarray:
    """scikit-learn's input checks, with their message kept but raised as an InterpError (a ValueError)."""
    try:
        return validate_data(est, _numpy(X), dtype=np.float64, allow_nd=True, **kwargs)
    except InterpError:
        raise
    except ValueError as e:
        raise InterpError(f"X is not usable for a difference of means: {e}") from e


class DiffOfMeans(TransformerMixin, BaseEstimator):
    """Difference of class means (float64, unnormalized): the refusal-direction candidate.

    With two labels (harmful vs harmless) it is the paper's difference of means; with more, the positive
    label against all the others.

    Parameters:
        positive: the label whose mean comes first (e.g. ``"harmful"``); default: the largest sorted
            label (1 of 0/1, True of False).

    Attributes:
        direction_: ``X.shape[1:]`` array, mean(positive) − mean(the rest), float64.
        classes_: the labels seen, sorted.
        positive_: the label used as positive.
        n_features_in_: ``X.shape[1]`` (scikit-learn's convention; the layers for a grid).

    Example:
        >>> est = DiffOfMeans(positive="harmful").fit([[1.0], [3.0], [0.0]], ["harmful", "harmful", "harmless"])
        >>> est.direction_.tolist()
        [2.0]
    """

    def __init__(self, positive=None):
        self.positive = positive

    def fit(self, X, y) -> "DiffOfMeans":
        X = _validated(self, X, ensure_min_samples=1)
        y = np.asarray(_numpy(y))
        if y.ndim != 1 or y.shape[0] != X.shape[0]:
            raise InterpError(f"y must be one label per example: {X.shape[0]} examples, y of shape {y.shape}")
        X = _tensor(X)
        classes = np.unique(y)
        if len(classes) < 2:
            raise InterpError(f"a difference of means needs two classes, got one class: {classes.tolist()}; pass "
                              f"examples of both (e.g. harmful and harmless)")
        positive = classes[-1] if self.positive is None else self.positive
        if positive not in classes.tolist():
            raise InterpError(f"positive={positive!r} is not one of the labels {classes.tolist()}")
        is_pos = torch.from_numpy(y == positive)
        self.direction_ = (X[is_pos].mean(0) - X[~is_pos].mean(0)).numpy()
        self.classes_, self.positive_ = classes, positive
        return self

    def transform(self, X) -> np.ndarray:
        """Projection of each example on the unit direction(s): [examples, number of directions]."""
        check_is_fitted(self, "direction_")
        X = _tensor(_validated(self, X, reset=False))
        d = torch.from_numpy(self.direction_)
        if tuple(X.shape[1:]) != tuple(d.shape):
            raise InterpError(f"X has shape {tuple(X.shape)}, the direction was fitted on [examples, "
                              f"{', '.join(map(str, d.shape))}]")
        unit = d / d.norm(dim=-1, keepdim=True).clamp(min=1e-12)
        return (X * unit).sum(-1).reshape(X.shape[0], -1).numpy()


def candidate_directions(harmful_acts, harmless_acts, name: str = "resid_pre") -> torch.Tensor:
    """Difference of means of two captures at every layer × position: [layers, positions, d], float64.

    ``harmful_acts`` and ``harmless_acts`` are ``Activations`` captured at the same sites and positions.
    """
    a, b = harmful_acts.stack(name), harmless_acts.stack(name)  # [layers, examples, positions, d]
    if a.shape[0] != b.shape[0] or a.shape[2:] != b.shape[2:]:
        raise InterpError(f"harmful and harmless captures differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    X = torch.cat([a, b], 1).transpose(0, 1)  # [examples, layers, positions, d]
    y = np.r_[np.ones(a.shape[1], dtype=int), np.zeros(b.shape[1], dtype=int)]
    return torch.from_numpy(DiffOfMeans(positive=1).fit(X, y).direction_)
