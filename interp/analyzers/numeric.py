"""Numeric attributes in linear subspaces (El-Shangiti et al.): PLS probes and their baselines.

``NumericSubspace`` standardizes activations and fits a PLS regression from
them to a numeric attribute (a birth year, a latitude). Its first weight
vector, mapped back to activation space as the paper's code does
(``x_weights_[:, 0] * scale``), is the steering direction ``direction_``.
``heldout_scores`` fits on one split of entities and scores another, per
layer, beside ridge, PCA + linear and shuffled-target baselines;
``cross_validate_layers`` does the same with entity-held-out folds.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(200, 16)); y = X @ rng.normal(size=16)
    >>> est = NumericSubspace(n_components=3).fit(X, y)
    >>> round(est.score(X, y), 2), est.direction_.shape
    (1.0, (16,))
"""
from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, RegressorMixin, TransformerMixin
from sklearn.exceptions import DataConversionWarning
from tqdm.auto import tqdm

from ..errors import InterpError
from . import NotFitted


def _as_2d(X, what: str = "X") -> np.ndarray:
    if hasattr(X, "detach"):
        X = X.detach().cpu().float().numpy()
    if sp.issparse(X):
        raise InterpError(f"sparse input is not supported: pass {what} as a dense array (X.toarray())")
    try:
        X = np.asarray(X)
        if X.dtype.kind == "c":
            raise InterpError(f"Complex data not supported: {what} must be real activations")
        X = X.astype(np.float64, copy=False)
    except (TypeError, ValueError) as e:
        if isinstance(e, InterpError):
            raise
        raise InterpError(f"{what} must be numeric [samples, features] activations ({e})") from None
    if X.ndim != 2:
        raise InterpError(f"{what} must be 2-D [samples, features], got shape {X.shape}. Reshape your data: take one "
                          f"position per example (e.g. acts[site][:, 0])")
    if X.shape[1] == 0:
        raise InterpError(f"0 feature(s) (shape={X.shape}) while a minimum of 1 is required: {what} has no features")
    if not np.isfinite(X).all():
        raise InterpError(f"{what} contains NaN or infinite values; drop those rows first")
    return X


def _as_target(y, n: int | None = None) -> np.ndarray:
    if y is None:
        raise InterpError("NumericSubspace requires y to be passed, but the target y is None; give one value per row")
    if hasattr(y, "detach"):
        y = y.detach().cpu().numpy()
    try:
        y = np.asarray(y, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise InterpError(f"y must hold numbers, one value per sample ({e}); encode labels as numbers") from None
    if y.ndim == 2 and y.shape[1] == 1:
        warnings.warn("A column-vector y was passed when a 1d array was expected; raveled to [n]",
                      DataConversionWarning, stacklevel=3)
        y = y.ravel()
    if y.ndim != 1:
        raise InterpError(f"y must be 1-D (one value per sample), got shape {y.shape}")
    if not np.isfinite(y).all():
        bad = np.flatnonzero(~np.isfinite(y))[:10].tolist()
        raise InterpError(f"y has NaN or infinite values at rows {bad}; drop entities without a value")
    if n is not None and len(y) != n:
        raise InterpError(f"X has {n} rows but y has {len(y)} values; give one value per row")
    if len(y) and np.ptp(y) == 0:
        raise InterpError(f"y is constant ({y[0]}); a regression needs targets that vary")
    return y


class NumericSubspace(TransformerMixin, RegressorMixin, BaseEstimator):
    """StandardScaler + PLS regression from activations to a numeric attribute (a scikit-learn estimator).

    Parameters:
        n_components: PLS components (the paper uses 5, its code defaults to 50).
        scale: standardize features first, as the paper does.

    Fitted (numpy arrays): ``scaler_mean_``, ``scaler_scale_``, ``pls_``
    (the sklearn ``PLSRegression``), ``components_`` [k, d] (PLS weight
    vectors mapped back to activation space as the paper's code does,
    ``x_weights_ · scale``, unit norm: the *pattern*), ``direction_`` [d]
    (the first of them, signed so the predicted value grows along it: the
    steering direction), ``filters_`` / ``filter_direction_`` (the same for
    ``x_weights_ / scale``: the direction the probe *reads*, which differs
    from the pattern when features have unequal spread), ``n_features_in_``.
    ``predict`` gives the value, ``transform`` the PLS scores [n, k],
    ``score`` the R²; numpy or torch input.

    Example:
        est = NumericSubspace(n_components=5).fit(acts["resid_post.8"][:, 0], birth_years)
        est.score(held_out_X, held_out_y)   # R²
    """

    def __init__(self, n_components: int = 5, scale: bool = True):
        self.n_components = n_components
        self.scale = scale

    def fit(self, X, y) -> "NumericSubspace":
        from sklearn.cross_decomposition import PLSRegression

        X = _as_2d(X)
        n, d = X.shape
        if n < 2:
            raise InterpError(f"n_samples = {n}: a regression needs at least 2 samples")
        y = _as_target(y, n)
        if not isinstance(self.n_components, (int, np.integer)) or self.n_components < 1:
            raise InterpError(f"n_components must be a positive integer, got {self.n_components!r}")
        if self.n_components > min(n - 1, d):
            raise InterpError(f"n_components={self.n_components} is too many for {n} samples of {d} features; "
                              f"use at most {max(1, min(n - 1, d))}")
        self.scaler_mean_ = X.mean(0)
        sd = X.std(0) if self.scale else np.ones(d)
        self.scaler_scale_ = np.where(sd > 0, sd, 1.0)  # constant features stay put, as StandardScaler does
        self.pls_ = PLSRegression(n_components=self.n_components, scale=False).fit(self._standardize(X), y)
        w = self.pls_.x_weights_.T
        # pattern: the paper's code maps a weight back to activation space as w·scale (undoing the
        # standardization of a vector); filter: w reads x through w·(x/scale), i.e. along w/scale
        self.components_ = self._signed_units(w * self.scaler_scale_)
        self.filters_ = self._signed_units(w / self.scaler_scale_)
        self.direction_ = self.components_[0].copy()
        self.filter_direction_ = self.filters_[0].copy()
        self.n_features_in_ = d
        return self

    def _signed_units(self, vectors: np.ndarray) -> np.ndarray:
        """Rows scaled to unit norm; the first signed so the prediction grows along it."""
        vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        if vectors[0] @ self.gradient_ < 0:
            vectors[0] = -vectors[0]
        return vectors

    @property
    def gradient_(self) -> np.ndarray:
        """d(prediction)/dx in activation space [d]."""
        self._check_fitted()
        return np.ravel(self.pls_.coef_) / self.scaler_scale_

    def _standardize(self, X: np.ndarray) -> np.ndarray:
        return (X - self.scaler_mean_) / self.scaler_scale_

    def _check_fitted(self) -> None:
        if not hasattr(self, "pls_"):
            raise NotFitted("this NumericSubspace is not fitted yet; call fit(X, y) first")

    def _check_X(self, X) -> np.ndarray:
        self._check_fitted()
        X = _as_2d(X)
        if X.shape[1] != self.n_features_in_:
            raise InterpError(f"X has {X.shape[1]} features, but NumericSubspace is expecting {self.n_features_in_} "
                              f"features as input (the activations it was fitted on)")
        return X

    def predict(self, X) -> np.ndarray:
        """Predicted attribute value per row [n]."""
        X = self._standardize(self._check_X(X))
        return np.ravel(self.pls_.predict(X))

    def score(self, X, y, sample_weight=None) -> float:
        """R² of the predictions (``sample_weight`` is not supported)."""
        if sample_weight is not None:
            raise InterpError("NumericSubspace.score takes no sample_weight")
        return r2(_as_target(y), self.predict(X))

    def transform(self, X) -> np.ndarray:
        """PLS scores [n, k] (coordinates in the subspace)."""
        X = self._standardize(self._check_X(X))
        return self.pls_.transform(X)


def r2(y: np.ndarray, pred: np.ndarray) -> float:
    """Coefficient of determination; 1 is perfect, 0 is the mean, negative is worse than the mean."""
    ss = float(((y - y.mean()) ** 2).sum())
    return 1.0 - float(((y - pred) ** 2).sum()) / ss if ss > 0 else float("nan")


BASELINES = ("ridge", "pca_linear", "shuffled")


def _baseline_predict(kind: str, Xtr, ytr, Xte, n_components: int, rng: np.random.Generator) -> np.ndarray:
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LinearRegression, RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if kind == "ridge":
        est = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-1, 5, 13)))
    elif kind == "pca_linear":
        # the full SVD: "auto" picks the randomized solver for wide X, unseeded, so R² moved between runs
        pca = PCA(n_components=min(n_components, *Xtr.shape), svd_solver="full")
        est = make_pipeline(StandardScaler(), pca, LinearRegression())
    elif kind == "shuffled":  # same PLS on permuted targets: what chance structure alone scores
        return NumericSubspace(n_components).fit(Xtr, rng.permutation(ytr)).predict(Xte)
    else:
        raise InterpError(f"unknown baseline {kind!r}; valid: {', '.join(BASELINES)}")
    return est.fit(Xtr, ytr).predict(Xte)


def entity_folds(groups: Sequence, n_splits: int = 5) -> list[tuple[np.ndarray, np.ndarray]]:
    """GroupKFold splits: every row of an entity falls in the same fold."""
    from sklearn.model_selection import GroupKFold

    groups = np.asarray(groups)
    n_groups = len(np.unique(groups))
    if n_splits < 2:
        raise InterpError(f"n_splits must be at least 2, got {n_splits}")
    if n_groups < n_splits:
        raise InterpError(f"only {n_groups} distinct entities for {n_splits} folds; use fewer folds or more "
                          f"entities (loosen the recall tolerance)")
    return list(GroupKFold(n_splits=n_splits).split(np.zeros(len(groups)), groups=groups))


def cross_validate_layers(X_layers, y, groups: Sequence, n_components: int = 5, n_splits: int = 5,
                          baselines: Sequence[str] = BASELINES, seed: int = 0,
                          progress: bool = True) -> dict[str, list[float]]:
    """Entity-held-out R² per layer for PLS and each baseline, on the same folds.

    ``X_layers`` is [layers, n, d] (or a list of [n, d]); ``groups`` names
    the entity of each row. R² is computed on the pooled out-of-fold
    predictions. Returns ``{"pls": [...], "ridge": [...], ...}``.

    Example:
        scores = cross_validate_layers(acts.stack("resid_post")[:, :, 0], years, names)
    """
    y = _as_target(y)
    if len(groups) != len(y):
        raise InterpError(f"got {len(groups)} group labels for {len(y)} rows; give the entity of each row")
    folds = entity_folds(groups, n_splits)
    rng = np.random.default_rng(seed)
    out: dict[str, list[float]] = {k: [] for k in ("pls", *baselines)}
    for X in tqdm(list(X_layers), desc="cross-validate", unit="layer", disable=not progress):
        X = _as_2d(X)
        if X.shape[0] != len(y):
            raise InterpError(f"a layer has {X.shape[0]} rows but y has {len(y)}")
        preds = {k: np.zeros(len(y)) for k in out}
        for tr, te in folds:
            preds["pls"][te] = NumericSubspace(n_components).fit(X[tr], y[tr]).predict(X[te])
            for b in baselines:
                preds[b][te] = _baseline_predict(b, X[tr], y[tr], X[te], n_components, rng)
        for k in out:
            out[k].append(r2(y, preds[k]))
    return out


def heldout_scores(X_layers, y, train: Sequence[int], held_out: Sequence[int], n_components: int = 5,
                   baselines: Sequence[str] = BASELINES, seed: int = 0,
                   progress: bool = True) -> dict[str, list[float]]:
    """R² per layer on the ``held_out`` rows of probes fitted on the ``train`` rows: PLS and each baseline.

    Split by entity (``interp.protocol.split_groups``) so no entity has rows on both sides. The
    shuffled baseline permutes the training targets with ``seed``.

    Example:
        scores = heldout_scores(X, y, splits.train, splits.val)   # {"pls": [...], "ridge": [...], ...}
    """
    y = _as_target(y)
    train, held_out = np.asarray(train, dtype=int), np.asarray(held_out, dtype=int)
    if len(train) < 2 or len(held_out) < 2:
        raise InterpError(f"need at least 2 training and 2 held-out rows, got {len(train)} and {len(held_out)}")
    if set(train.tolist()) & set(held_out.tolist()):
        raise InterpError("the training and held-out rows overlap; split by entity first")
    rng = np.random.default_rng(seed)
    out: dict[str, list[float]] = {k: [] for k in ("pls", *baselines)}
    for X in tqdm(list(X_layers), desc="fit per layer", unit="layer", disable=not progress):
        X = _as_2d(X)
        if X.shape[0] != len(y):
            raise InterpError(f"a layer has {X.shape[0]} rows but y has {len(y)}")
        k = min(n_components, len(train) - 1, X.shape[1])
        out["pls"].append(r2(y[held_out], NumericSubspace(k).fit(X[train], y[train]).predict(X[held_out])))
        for b in baselines:
            out[b].append(r2(y[held_out], _baseline_predict(b, X[train], y[train], X[held_out], k, rng)))
    return out
