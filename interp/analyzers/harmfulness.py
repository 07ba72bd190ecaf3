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

from pathlib import Path

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin

from ..errors import InterpError
from . import NotFitted


class InputTypeError(InterpError, TypeError):
    """Activations that are not numbers (objects, sparse matrices): an InterpError that is also a TypeError."""


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


class LatentGuard(ClassifierMixin, BaseEstimator):
    """Harmfulness classifier from the model's own latent belief (Zhao et al.); a scikit-learn classifier.

    ``X`` is [examples, layers, d] (``resid_post`` at the last instruction token, every layer) or
    [examples, d] (one layer); numpy or torch. Labels are any two classes: 0/1 (1 harmful), booleans
    (True harmful), strings with a ``"harmful"`` class, or anything else with ``harmful_label`` naming
    the harmful class (default: the second of the two sorted labels).

    Parameters:
        threshold: flag as harmful when the belief score is ≥ this (paper: 0).
        layers: indices of the layers to average over (default: all given).
        harmful_label: the label of the harmful class (default: see above).

    Fitted attributes: ``harmful_centroid_`` and ``harmless_centroid_`` ([layers, d] float64 numpy),
    ``classes_`` (the two labels, sorted), ``harmful_class_``, ``n_features_in_`` (d), ``n_layers_in_``,
    and ``calibration_`` (slope, intercept) of a logistic fit of the belief score used by
    ``predict_proba``.

    ``belief_score`` is the paper's score (higher = more harmful). ``decision_function`` is the score of
    ``classes_[1]`` as scikit-learn expects: belief − threshold when the harmful class sorts second (0/1,
    False/True), its negation when it sorts first (``"harmful"`` < ``"harmless"``). ``predict_proba`` is a
    logistic calibration of the belief score on the training data: it ranks like the belief score but
    its 0.5 point is fitted, so near the boundary it may disagree with ``predict``'s fixed threshold
    (the paper's rule; on small models a calibrated cut is often the fairer read).

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> X = rng.normal(size=(40, 8)); y = np.array(["harmful", "harmless"] * 20)
        >>> X[y == "harmful", :4] += 2.0; X[y == "harmless", 4:] += 2.0
        >>> guard = LatentGuard().fit(X, y)
        >>> guard.predict(X[:2]).tolist(), guard.score(X, y) > 0.9
        (['harmful', 'harmless'], True)
    """

    def __init__(self, threshold: float = 0.0, layers: list[int] | None = None, harmful_label=None):
        self.threshold = threshold
        self.layers = layers
        self.harmful_label = harmful_label

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = False  # harmful vs harmless only
        tags.input_tags.three_d_array = True  # [examples, layers, d]
        return tags

    def _select(self, X: torch.Tensor) -> torch.Tensor:
        return X if self.layers is None else X[:, list(self.layers)]

    def fit(self, X, y) -> "LatentGuard":
        """X: [examples, layers, d] at the last instruction token; y: harmful / harmless labels."""
        from sklearn.linear_model import LogisticRegression

        X = _features(X, "X")
        y, classes, harmful = _binary_labels(y, X.shape[0], self.harmful_label)
        is_harmful = torch.as_tensor(y == harmful)
        X = self._select(X)
        self.harmful_centroid_ = X[is_harmful].mean(0).numpy()
        self.harmless_centroid_ = X[~is_harmful].mean(0).numpy()
        self.n_features_in_ = X.shape[-1]
        self.n_layers_in_ = X.shape[1]
        self.classes_ = classes
        self.harmful_class_ = harmful
        scores = self._belief(X)
        lr = LogisticRegression().fit(scores[:, None], is_harmful.long().numpy())
        self.calibration_ = (float(lr.coef_[0, 0]), float(lr.intercept_[0]))
        return self

    def fit_store(self, store, y, sites=None) -> "LatentGuard":
        """``fit`` from an ``ActivationStore`` larger than RAM: two passes, one shard in memory at a time.

        The store holds one position per prompt (the last instruction token) at ``sites`` (default: all
        stored, in store order, e.g. ``resid_post`` of every layer), which become the guard's layers; ``y``
        has one label per stored prompt. Pass 1 sums each class in float64 (the centroids), pass 2 scores
        every prompt for the calibration; equal to ``fit`` on the loaded arrays up to summation order.

        Example:
            guard = LatentGuard().fit_store(ActivationStore("acts/"), labels)
        """
        from sklearn.linear_model import LogisticRegression

        from .refusal import _store_labels

        y, classes, harmful = _binary_labels(_store_labels(store, y), store.n_examples, self.harmful_label)
        is_harmful = y == harmful

        def batches():
            for start, X, mask in store.iter_examples(sites):
                if X.shape[2] != 1 or not bool(mask.all()):
                    raise InterpError(f"LatentGuard.fit_store needs one captured position per prompt (e.g. "
                                      f"positions='instruction_last'); the store has {X.shape[2]}")
                yield start, self._select(X[:, :, 0].double())

        sums = counts = None
        for start, X in batches():
            h = torch.from_numpy(is_harmful[start:start + X.shape[0]])
            if sums is None:
                sums, counts = torch.zeros((2,) + tuple(X.shape[1:]), dtype=torch.float64), [0, 0]
            sums[1] += X[h].sum(0)
            sums[0] += X[~h].sum(0)
            counts[1] += int(h.sum())
            counts[0] += int((~h).sum())
        self.harmful_centroid_ = (sums[1] / counts[1]).numpy()
        self.harmless_centroid_ = (sums[0] / counts[0]).numpy()
        self.n_features_in_, self.n_layers_in_ = sums.shape[-1], sums.shape[1]
        self.classes_, self.harmful_class_ = classes, harmful
        scores = np.concatenate([self._belief(X) for _, X in batches()])
        lr = LogisticRegression().fit(scores[:, None], is_harmful.astype(np.int64))
        self.calibration_ = (float(lr.coef_[0, 0]), float(lr.intercept_[0]))
        return self

    def _belief(self, X: torch.Tensor) -> np.ndarray:
        cos = torch.nn.functional.cosine_similarity
        harmful, harmless = torch.from_numpy(self.harmful_centroid_), torch.from_numpy(self.harmless_centroid_)
        return (cos(X, harmful[None], dim=-1) - cos(X, harmless[None], dim=-1)).mean(1).numpy()

    def belief_score(self, X) -> np.ndarray:
        """The paper's belief score per example: mean over layers of cos(h, harmful) − cos(h, harmless)."""
        if not hasattr(self, "harmful_centroid_"):
            raise NotFitted("this LatentGuard is not fitted yet; call fit(X, y) first")
        X = self._select(_features(X, "X"))
        if X.shape[-1] != self.n_features_in_:
            raise InterpError(f"X has {X.shape[-1]} features, but LatentGuard is expecting {self.n_features_in_} "
                              f"features as input; use activations of the model and site the guard was fitted on")
        if X.shape[1:] != self.harmful_centroid_.shape:
            raise InterpError(f"X has layers x d = {tuple(X.shape[1:])}, the guard was fitted on "
                              f"{tuple(self.harmful_centroid_.shape)}")
        return self._belief(X)

    def decision_function(self, X) -> np.ndarray:
        """Score of ``classes_[1]``: belief score − ``threshold`` (negated when the harmful class is ``classes_[0]``).

        Positive exactly where ``predict`` says ``classes_[1]``; with the paper's threshold 0 it is the belief score.
        """
        score = self.belief_score(X) - self.threshold
        return score if self.harmful_class_ == self.classes_[1] else -score

    def predict(self, X) -> np.ndarray:
        """The harmful label where the belief score is ≥ ``threshold``, the other label elsewhere."""
        flag = self.belief_score(X) >= self.threshold
        harmless = self.classes_[0] if self.harmful_class_ == self.classes_[1] else self.classes_[1]
        return np.where(flag, self.harmful_class_, harmless)

    def predict_proba(self, X) -> np.ndarray:
        """[examples, 2] probabilities in ``classes_`` order, from the calibrated belief score."""
        score = self.belief_score(X)
        slope, intercept = self.calibration_
        p = 1 / (1 + np.exp(-(slope * score + intercept)))
        both = np.stack([1 - p, p], axis=1)
        return both if self.harmful_class_ == self.classes_[1] else both[:, ::-1].copy()

    def score(self, X, y, sample_weight=None) -> float:
        """Accuracy at ``threshold``."""
        from sklearn.metrics import accuracy_score

        return float(accuracy_score(_labels(y), self.predict(X), sample_weight=sample_weight))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"harmful_centroid": torch.from_numpy(self.harmful_centroid_).float(),
                "harmless_centroid": torch.from_numpy(self.harmless_centroid_).float(),
                "calibration": torch.tensor(self.calibration_)}

    def save(self, path, metadata: dict | None = None) -> None:
        """safetensors with the centroids and JSON metadata (threshold, layers, labels, model)."""
        import json

        from safetensors.torch import save_file

        meta = {"threshold": self.threshold, "layers": self.layers, "classes": np.asarray(self.classes_).tolist(),
                "harmful_class": np.asarray(self.harmful_class_).tolist(), **(metadata or {})}
        save_file(self.state_dict(), str(path), metadata={"interp": json.dumps(meta)})

    @classmethod
    def load(cls, path) -> tuple["LatentGuard", dict]:
        """A guard written by ``save`` and its metadata (guards saved before labels were stored read as 0/1)."""
        import json

        from safetensors import safe_open

        if not Path(path).is_file():
            raise InterpError(f"{path} does not exist; fit a guard first (interp guard fit)")
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("interp", "{}"))
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        guard = cls(threshold=meta.get("threshold", 0.0), layers=meta.get("layers"))
        guard.harmful_centroid_ = tensors["harmful_centroid"].double().numpy()
        guard.harmless_centroid_ = tensors["harmless_centroid"].double().numpy()
        guard.n_features_in_ = guard.harmful_centroid_.shape[-1]
        guard.n_layers_in_ = guard.harmful_centroid_.shape[0]
        guard.classes_ = np.array(meta.get("classes", [0, 1]))
        guard.harmful_class_ = guard.classes_[guard.classes_.tolist().index(meta.get("harmful_class", 1))]
        guard.calibration_ = tuple(tensors["calibration"].tolist())
        return guard, meta


def _features(X, what: str) -> torch.Tensor:
    """Activations as float64 torch [examples, layers, d] ([examples, d] is one layer), checked by scikit-learn."""
    from sklearn.utils.validation import check_array

    if isinstance(X, torch.Tensor):
        X = X.detach().cpu()
        if X.is_complex():
            raise InterpError(f"Complex data not supported: {what} is a complex tensor")
        X = X.to(torch.float64).numpy()
    try:
        arr = check_array(X, allow_nd=True, dtype=np.float64, input_name=what)
    except InterpError:
        raise
    except TypeError as e:  # not numbers (objects, sparse): keep the type scikit-learn callers expect
        raise InputTypeError(f"{e} (LatentGuard takes [examples, layers, d] or [examples, d] activations)") from None
    except ValueError as e:  # sklearn's message names the problem (NaN, 1-D, empty, complex, ...)
        raise InterpError(f"{e} (LatentGuard takes [examples, layers, d] or [examples, d] activations)") from None
    if arr.ndim > 3:
        raise InterpError(f"{what} must be [examples, layers, d] (or [examples, d]), got shape {arr.shape}")
    t = torch.from_numpy(arr if arr.flags.writeable else arr.copy())  # torch warns on read-only arrays
    return t[:, None] if t.dim() == 2 else t


def _labels(y) -> np.ndarray:
    if isinstance(y, torch.Tensor):
        y = y.detach().cpu().numpy()
    return np.asarray(y)


def _binary_labels(y, n: int, harmful_label) -> tuple[np.ndarray, np.ndarray, object]:
    """(labels [n], the two sorted classes, the harmful one); a clear error for anything else."""
    from sklearn.utils.multiclass import check_classification_targets
    from sklearn.utils.validation import column_or_1d

    if y is None:
        raise InterpError("LatentGuard requires y to be passed, but the target y is None; give one label per "
                          "example (1 harmful, 0 harmless)")
    y = column_or_1d(_labels(y), warn=True)
    if y.shape[0] != n:
        raise InterpError(f"X has {n} examples but y has {y.shape[0]} labels")
    check_classification_targets(y)
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) != 2:
        raise InterpError(f"Only binary classification is supported. LatentGuard needs two classes (harmful and "
                          f"harmless), got {len(classes)} "
                          f"class{'es' if len(classes) != 1 else ''}: {dict(zip(classes.tolist(), counts.tolist()))}")
    if harmful_label is not None:
        if harmful_label not in classes.tolist():
            raise InterpError(f"harmful_label={harmful_label!r} is not one of the labels {classes.tolist()}")
        harmful = classes[classes.tolist().index(harmful_label)]
    elif "harmful" in classes.tolist():
        harmful = classes[classes.tolist().index("harmful")]
    else:
        harmful = classes[1]
    if counts.min() < 2:
        raise InterpError(f"too few examples to fit: {dict(zip(classes.tolist(), counts.tolist()))}; need at least 2 "
                          f"of each class (the paper used about 100 + 100)")
    return y, classes, harmful
