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

    def partial_fit(self, X, y, classes=None) -> "DiffOfMeans":
        """Add a batch of examples to float64 running sums; ``direction_`` is current after every call.

        ``classes`` (all labels) is needed on the first call unless that batch already holds two labels
        (scikit-learn's partial_fit convention). A sequence of ``partial_fit`` calls gives the ``fit`` of
        all batches at once, up to float64 summation order.

        Example:
            >>> est = DiffOfMeans().partial_fit([[2.0], [0.0]], [1, 0]).partial_fit([[4.0]], [1])
            >>> est.direction_.tolist()
            [3.0]
        """
        first = not hasattr(self, "sums_")
        X = _tensor(_validated(self, X, ensure_min_samples=1, reset=first))
        y = np.asarray(_numpy(y))
        if y.ndim != 1 or y.shape[0] != X.shape[0]:
            raise InterpError(f"y must be one label per example: {X.shape[0]} examples, y of shape {y.shape}")
        if first:
            classes = np.unique(y if classes is None else np.asarray(classes))
            if len(classes) < 2:
                raise InterpError(f"a difference of means needs two classes; the first partial_fit saw only "
                                  f"{classes.tolist()}: pass classes=[...] with every label")
            positive = classes[-1] if self.positive is None else self.positive
            if positive not in classes.tolist():
                raise InterpError(f"positive={positive!r} is not one of the labels {classes.tolist()}")
            self.classes_, self.positive_ = classes, positive
            self.sums_ = torch.zeros((2,) + tuple(X.shape[1:]), dtype=torch.float64)  # [rest, positive]
            self.counts_ = np.zeros(2, dtype=np.int64)
        elif tuple(X.shape[1:]) != tuple(self.sums_.shape[1:]):
            raise InterpError(f"X has shape {tuple(X.shape)}, earlier batches were [examples, "
                              f"{', '.join(map(str, self.sums_.shape[1:]))}]")
        unknown = set(np.unique(y).tolist()) - set(self.classes_.tolist())
        if unknown:
            raise InterpError(f"labels {sorted(unknown)} were not among classes {self.classes_.tolist()}")
        is_pos = torch.from_numpy(y == self.positive_)
        self.sums_[1] += X[is_pos].sum(0)
        self.sums_[0] += X[~is_pos].sum(0)
        self.counts_ += [int((~is_pos).sum()), int(is_pos.sum())]
        if self.counts_.min() > 0:
            self.direction_ = (self.sums_[1] / int(self.counts_[1]) - self.sums_[0] / int(self.counts_[0])).numpy()
        return self

    def fit_store(self, store, y, sites=None) -> "DiffOfMeans":
        """Fit from an ``ActivationStore`` larger than RAM, one shard at a time.

        ``y`` holds one label per stored prompt (in store order); X per prompt is [sites, positions, d]
        (``sites`` default: all stored, in store order), as ``candidate_directions`` builds it in memory.

        Example:
            est = DiffOfMeans(positive=1).fit_store(ActivationStore("acts/"), labels, ["resid_pre.10"])
        """
        y = _store_labels(store, y)
        for attr in ("sums_", "counts_", "direction_"):
            self.__dict__.pop(attr, None)
        for start, X, mask in store.iter_examples(sites):
            _all_positions(mask)
            self.partial_fit(X, y[start:start + X.shape[0]], classes=np.unique(y))
        if not hasattr(self, "direction_"):
            raise InterpError("the store holds examples of one class only; a difference of means needs two")
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


def _store_labels(store, y) -> np.ndarray:
    """One label per stored prompt, checked against a complete store."""
    if not store.complete:
        raise InterpError(f"the store at {store.path} is incomplete ({store.n_examples} of "
                          f"{store.manifest['n_prompts']} prompts); run the same capture again to finish it")
    y = np.asarray(_numpy(y))
    if y.ndim != 1 or y.shape[0] != store.n_examples:
        raise InterpError(f"y must hold one label per stored prompt ({store.n_examples}), got shape {y.shape}")
    return y


def _all_positions(mask: torch.Tensor) -> None:
    if not bool(mask.all()):
        raise InterpError("some prompts have fewer captured positions than others (padding in the store); a "
                          "per-example grid needs a fixed position count (e.g. 'last' or post_instruction)")


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
