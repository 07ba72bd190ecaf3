"""Harmfulness is encoded apart from refusal (Zhao et al. 2025): directions and Latent Guard.

Estimators on activations, no model inside:

- ``centroid_direction``: centroid(positive) − centroid(negative) per layer.
- ``cosine_per_layer`` and ``permutation_cosines``: how aligned two sets of
  per-layer directions are, and what chance alignment looks like.
- ``LatentGuard``: scores a prompt by the layer-averaged
  cos(h, harmful centroid) − cos(h, harmless centroid) at the last
  instruction token, and flags it as harmful when the score ≥ ``threshold``.

Example:
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> X = torch.randn(40, 3, 16, generator=g); y = torch.arange(40) % 2
    >>> X[y == 1, :, :8] += 2.0   # the two classes lean on different features
    >>> X[y == 0, :, 8:] += 2.0
    >>> guard = LatentGuard().fit(X, y)
    >>> guard.score(X, y) > 0.9
    True
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import InterpError


def _check_xy(X, y, min_per_class: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    X = torch.as_tensor(X, dtype=torch.float64)
    y = torch.as_tensor(np.asarray(y)).long()
    if X.dim() == 2:
        X = X[:, None]
    if X.dim() != 3:
        raise InterpError(f"X must be [examples, layers, d] (or [examples, d]), got shape {tuple(X.shape)}")
    if X.shape[0] != y.shape[0]:
        raise InterpError(f"X has {X.shape[0]} examples but y has {y.shape[0]} labels")
    if not torch.isfinite(X).all():
        raise InterpError("X contains NaN or infinite values")
    counts = {int(c): int((y == c).sum()) for c in torch.unique(y)}
    if set(counts) != {0, 1}:
        raise InterpError(f"need labels 0 (harmless) and 1 (harmful) both present; got counts {counts}")
    if min(counts.values()) < min_per_class:
        raise InterpError(f"too few examples to fit: {counts[1]} harmful and {counts[0]} harmless; need at least "
                          f"{min_per_class} of each (the paper used about 100 + 100)")
    return X, y


def centroid_direction(X, y) -> torch.Tensor:
    """centroid(y == 1) − centroid(y == 0) for every layer: [layers, d] (float64)."""
    X, y = _check_xy(X, y, min_per_class=1)
    return X[y == 1].mean(0) - X[y == 0].mean(0)


def cosine_per_layer(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine between matching rows of two [layers, d] direction sets."""
    if a.shape != b.shape:
        raise InterpError(f"direction sets differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1)


def permutation_cosines(X, y, reference: torch.Tensor, n_permutations: int = 100, seed: int = 0) -> torch.Tensor:
    """Cosines [n_permutations, layers] between ``reference`` and directions from shuffled labels."""
    X, y = _check_xy(X, y, min_per_class=1)
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_permutations):
        perm = y[torch.randperm(len(y), generator=gen)]
        out.append(cosine_per_layer(reference, X[perm == 1].mean(0) - X[perm == 0].mean(0)))
    return torch.stack(out)


class LatentGuard:
    """Harmfulness classifier from the model's own latent belief (Zhao et al.).

    Parameters:
        threshold: flag as harmful when the belief score is ≥ this (paper: 0).
        layers: indices of the layers to average over (default: all given).

    Fitted attributes: ``harmful_centroid_`` and ``harmless_centroid_``
    ([layers, d]), ``n_features_in_``, ``classes_``, and ``calibration_``
    (slope, intercept) of a logistic fit of the score used by
    ``predict_proba``.
    """

    def __init__(self, threshold: float = 0.0, layers: list[int] | None = None):
        self.threshold = threshold
        self.layers = layers

    def _select(self, X: torch.Tensor) -> torch.Tensor:
        return X if self.layers is None else X[:, self.layers]

    def fit(self, X, y) -> "LatentGuard":
        """X: [examples, layers, d] at the last instruction token; y: 1 harmful, 0 harmless."""
        from sklearn.linear_model import LogisticRegression

        X, y = _check_xy(X, y)
        X = self._select(X)
        self.harmful_centroid_ = X[y == 1].mean(0)
        self.harmless_centroid_ = X[y == 0].mean(0)
        self.n_features_in_ = X.shape[-1]
        self.n_layers_in_ = X.shape[1]
        self.classes_ = np.array([0, 1])
        scores = self.decision_function(X, _selected=True)
        lr = LogisticRegression().fit(scores[:, None], y.numpy())
        self.calibration_ = (float(lr.coef_[0, 0]), float(lr.intercept_[0]))
        return self

    def decision_function(self, X, _selected: bool = False) -> np.ndarray:
        """Belief score per example: mean over layers of cos(h, harmful) − cos(h, harmless)."""
        if not hasattr(self, "harmful_centroid_"):
            raise InterpError("this LatentGuard is not fitted yet; call fit(X, y) first")
        X = torch.as_tensor(X, dtype=torch.float64)
        if X.dim() == 2:
            X = X[:, None]
        if not _selected:
            X = self._select(X)
        if X.shape[1:] != self.harmful_centroid_.shape:
            raise InterpError(f"X has layers x d = {tuple(X.shape[1:])}, the guard was fitted on "
                              f"{tuple(self.harmful_centroid_.shape)}")
        cos = torch.nn.functional.cosine_similarity
        score = cos(X, self.harmful_centroid_[None], dim=-1) - cos(X, self.harmless_centroid_[None], dim=-1)
        return score.mean(1).numpy()

    def predict(self, X) -> np.ndarray:
        return (self.decision_function(X) >= self.threshold).astype(int)

    def predict_proba(self, X) -> np.ndarray:
        slope, intercept = self.calibration_
        p = 1 / (1 + np.exp(-(slope * self.decision_function(X) + intercept)))
        return np.stack([1 - p, p], axis=1)

    def score(self, X, y) -> float:
        """Accuracy at ``threshold``."""
        return float((self.predict(X) == np.asarray(y)).mean())

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"harmful_centroid": self.harmful_centroid_.float(), "harmless_centroid": self.harmless_centroid_.float(),
                "calibration": torch.tensor(self.calibration_)}

    def save(self, path, metadata: dict | None = None) -> None:
        """safetensors with the centroids and JSON metadata (threshold, layers, model)."""
        import json

        from safetensors.torch import save_file

        meta = {"threshold": self.threshold, "layers": self.layers, **(metadata or {})}
        save_file(self.state_dict(), str(path), metadata={"interp": json.dumps(meta)})

    @classmethod
    def load(cls, path) -> tuple["LatentGuard", dict]:
        import json

        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("interp", "{}"))
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        guard = cls(threshold=meta.get("threshold", 0.0), layers=meta.get("layers"))
        guard.harmful_centroid_ = tensors["harmful_centroid"].double()
        guard.harmless_centroid_ = tensors["harmless_centroid"].double()
        guard.n_features_in_ = guard.harmful_centroid_.shape[-1]
        guard.n_layers_in_ = guard.harmful_centroid_.shape[0]
        guard.classes_ = np.array([0, 1])
        guard.calibration_ = tuple(tensors["calibration"].tolist())
        return guard, meta
