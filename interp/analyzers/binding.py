"""IsSameObject pairwise probes (Li et al., arXiv 2510.24709): do two tokens belong together?

A probe scores a pair of token vectors (x, y) from one layer with a logit:

- ``linear``:   wᵀx + wᵀy + b — a sum of per-token scores; it cannot express a
  relation between x and y, so it is the baseline a relational probe must beat;
- ``diagonal``: xᵀ diag(w) y + b;
- ``full``:     xᵀ W y + b with W symmetric;
- ``lowrank``:  W = (AᵀB + BᵀA)/2 with A, B ∈ R^{r×d}; the smallest r that
  matches the full probe is the dimension of the binding subspace.

The bilinear score of ``full`` and ``lowrank`` is divided by √d
(``bilinear_scale="sqrt_d"``, as the authors' code does for its quadratic
probe: ``W_sym / sqrt(C)``); ``bilinear_scale="none"`` leaves it out. With
Adam the factor is not absorbed by W: it scales each step's change of the
score, and so how far the probe moves per epoch and how strongly weight decay
pulls. The diagonal probe is left unscaled, as in their code.

Features are standardized with statistics of the training tokens. Training
is Adam on the binary cross-entropy (lr 1e-3, weight decay 0.01, as in the
paper). ``SimilarityBaseline`` thresholds cosine similarity or the dot
product. Every accuracy should be read beside ``majority_baseline`` and
``class_balance`` of the same labels.

Both are scikit-learn binary classifiers and take the pairs in two forms:

- ``fit(X, y)``: one row per pair, the two token vectors side by side
  ([n_pairs, 2·d], x then y; or [n_pairs, 2, d]) — what ``Pipeline``,
  ``cross_val_score`` and ``GridSearchCV`` pass;
- ``fit(X, pairs, labels)``: token vectors [n_tokens, d] plus row-index pairs
  [n_pairs, 2] (no copy of the vectors per pair) — what the experiment uses.

A fitted estimator predicts from either form. Labels can be any two values
(0/1, bools, strings); ``classes_[1]`` is the class a positive logit means.
Outputs are numpy arrays.

Example:
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> X = torch.randn(40, 6, generator=g)
    >>> pairs = torch.tensor([[i, (i + 1) % 40] for i in range(40)])
    >>> labels = torch.arange(40) % 2
    >>> probe = PairwiseProbe("diagonal", epochs=2).fit(X, pairs, labels)
    >>> probe.predict_proba(X, pairs).shape
    (40, 2)
    >>> probe.predict(torch.cat([X[pairs[:, 0]], X[pairs[:, 1]]], 1)).shape  # the same pairs, side by side
    (40,)
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from torch import nn

from ..errors import InterpError
from . import NotFitted

KINDS = ("linear", "diagonal", "full", "lowrank")
#: How the bilinear score of full / lowrank probes is scaled: "sqrt_d" (÷√d, the paper's code) or "none".
BILINEAR_SCALES = ("sqrt_d", "none")


def _as_float(X, what: str = "X", pair_rows: bool = False) -> torch.Tensor:
    """A float32 tensor [n, d] (or [n, 2, d] when ``pair_rows``), checked for NaN/inf.

    Torch tensors are used as they are (no copy when already float32); anything
    else goes through scikit-learn's ``check_array`` for its usual checks.
    """
    if not isinstance(X, torch.Tensor):
        from sklearn.utils import check_array

        try:
            X = check_array(X, dtype=(np.float64, np.float32), allow_nd=pair_rows, ensure_min_samples=1,
                            input_name=what)
        except ValueError as e:
            raise InterpError(f"{e} ({what} must be real numbers, dense, [n_tokens, d] or pairs side by side)") \
                from None
        X = torch.as_tensor(X)
    if not (X.dim() == 2 or (pair_rows and X.dim() == 3)):
        raise InterpError(f"{what} must be a 2-D array [n_tokens, d] (or [n_pairs, 2·d], [n_pairs, 2, d] for pairs "
                          f"side by side), got shape {tuple(X.shape)}")
    if not torch.is_floating_point(X):
        X = X.float()
    if not torch.isfinite(X).all():
        raise InterpError(f"{what} contains NaN or infinite values; check the captured activations")
    return X.detach().float()


def check_pairs(X: torch.Tensor, pairs, labels=None) -> tuple[torch.Tensor, np.ndarray | None]:
    """Validate ``pairs`` [n_pairs, 2] (row indices of X) and optional ``labels`` [n_pairs] (returned as numpy)."""
    pairs = torch.as_tensor(np.asarray(pairs) if not isinstance(pairs, torch.Tensor) else pairs)
    if pairs.dim() != 2 or pairs.shape[1] != 2:
        raise InterpError(f"pairs must be [n_pairs, 2] row indices into X, got shape {tuple(pairs.shape)}")
    if pairs.shape[0] == 0:
        raise InterpError("there are no pairs; build some with interp.data.binding.sample_pairs")
    if torch.is_floating_point(pairs):
        raise InterpError("pairs must be integer row indices into X")
    pairs = pairs.long()
    if pairs.min() < 0 or pairs.max() >= X.shape[0]:
        raise InterpError(f"pairs index rows {int(pairs.min())}..{int(pairs.max())} but X has {X.shape[0]} rows; "
                          f"pairs must index rows of the X passed alongside them")
    if labels is None:
        return pairs, None
    return pairs, _labels_1d(labels, pairs.shape[0])


def _labels_1d(labels, n: int | None = None) -> np.ndarray:
    from sklearn.utils.multiclass import type_of_target
    from sklearn.utils.validation import column_or_1d

    if labels is None:
        raise InterpError("this estimator requires y to be passed, but the target y is None: give one label per pair")
    y = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    y = column_or_1d(y, warn=True) if y.ndim == 2 and y.shape[1] == 1 else y
    if y.ndim != 1:
        raise InterpError(f"labels must be 1-D, one per pair, got shape {y.shape}")
    if n is not None and y.shape[0] != n:
        raise InterpError(f"got {n} pairs but {y.shape[0]} labels; give one label per pair")
    if y.size and type_of_target(y) == "continuous":
        raise InterpError("Unknown label type: continuous; labels must be two classes (e.g. 0/1, or strings)")
    return y


def _pair_rows(X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairs side by side ([n, 2·d] or [n, 2, d]) → token rows [2n, d] and pairs [n, 2] indexing them."""
    n = X.shape[0]
    if X.dim() == 3:
        if X.shape[1] != 2:
            raise InterpError(f"pairs side by side must be [n_pairs, 2, d], got shape {tuple(X.shape)}")
    elif X.shape[1] % 2:
        raise InterpError(f"pairs side by side need an even number of columns (x then y), got {X.shape[1]} "
                          f"feature(s); or pass token vectors with pairs=")
    if n == 0:
        raise InterpError("there are no pairs (X has 0 rows)")
    return X.reshape(2 * n, -1), torch.arange(2 * n).reshape(n, 2)


class _PairEstimator(ClassifierMixin, BaseEstimator):
    """Input handling shared by the pair classifiers: pairs side by side, or token vectors + row-index pairs."""

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = False  # "same object or not" is binary
        # the probes read a relation between a row's two halves; generic data (class in each feature) is not that
        tags.classifier_tags.poor_score = True
        return tags

    def _fit_input(self, X, y, labels) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(tokens, pairs, 0/1 float targets); sets ``classes_`` and ``n_features_in_`` (a pair's features, 2·d)."""
        if labels is None:  # fit(X, y): one row per pair
            classes = self._set_classes(_labels_1d(y))
            X = _as_float(X, pair_rows=True)
            tokens, pairs = _pair_rows(X)
            y = _labels_1d(y, pairs.shape[0])
            # a token shared by several pairs counts once in the standardization, as with row-index pairs
            tokens, inverse = torch.unique(tokens, dim=0, return_inverse=True)
            pairs = inverse[pairs]
        else:  # fit(tokens, pairs, labels)
            tokens = _as_float(X)
            pairs, y = check_pairs(tokens, y, labels)
            classes = self._set_classes(y)
        self.n_features_in_ = 2 * tokens.shape[1]
        return tokens, pairs, torch.from_numpy((y == classes[1]).astype(np.float32))

    def _set_classes(self, y: np.ndarray) -> np.ndarray:
        classes = np.unique(y)
        if len(classes) < 2:
            what = f"{classes[0]!r}" if len(classes) else "missing"
            raise InterpError(f"all {len(y)} training labels are {what} (one class only); a pairwise probe needs "
                              f"both same-object (1) and different-object (0) pairs")
        if len(classes) > 2:
            raise InterpError(f"Only binary classification is supported: labels take {len(classes)} values, a "
                              f"pairwise probe tells same object from not")
        self.classes_ = classes
        return classes

    def _input(self, X, pairs) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens, pairs) for predicting, with the feature count checked against the fit."""
        if not hasattr(self, "classes_"):
            raise NotFitted(f"this {type(self).__name__} is not fitted yet; call fit(X, y) or fit(X, pairs, labels) "
                            f"first")
        d = self.n_features_in_ // 2
        if pairs is not None:
            X = _as_float(X)
            if X.shape[1] != d:
                raise InterpError(f"X has {X.shape[1]} features but the probe was fitted on {d}")
            return X, check_pairs(X, pairs)[0]
        X = _as_float(X, pair_rows=True)
        width = X.shape[1] if X.dim() == 2 else X.shape[1] * X.shape[2]
        if width != 2 * d:
            raise InterpError(f"X has {width} features, but {type(self).__name__} is expecting {2 * d} features as "
                              f"input (a pair's two token vectors side by side; or token vectors of {d} features with "
                              f"pairs=)")
        return _pair_rows(X)

    def _decide(self, tokens: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decision_function(self, X, pairs=None) -> np.ndarray:
        """Scores [n_pairs]: > 0 means ``classes_[1]`` (same object)."""
        return self._decide(*self._input(X, pairs)).numpy()

    def predict(self, X, pairs=None) -> np.ndarray:
        """The class of each pair [n_pairs] (0/1 for 0/1 labels)."""
        positive = (self._decide(*self._input(X, pairs)) > 0).long().numpy()
        return self.classes_[positive]

    def score(self, X, y, labels=None) -> float:
        """Accuracy on labelled pairs: ``score(X, y)`` or ``score(tokens, pairs, labels)``.

        Read it beside ``majority_baseline`` of the same labels.
        """
        if labels is None:
            tokens, pairs = self._input(X, None)
            labels = _labels_1d(y, pairs.shape[0])
        else:
            tokens, pairs = self._input(X, y)
            labels = _labels_1d(labels, pairs.shape[0])
        return self._accuracy(tokens, pairs, labels)

    def _accuracy(self, tokens: torch.Tensor, pairs: torch.Tensor, labels: np.ndarray) -> float:
        hit = self.classes_[(self._decide(tokens, pairs) > 0).long().numpy()] == labels
        # a float32 mean, as every accuracy in the reports so far was computed
        return float(torch.from_numpy(hit).float().mean())


def class_balance(labels) -> float:
    """Fraction of positive (same-object) pairs.

    Example:
        >>> class_balance([1, 0, 0, 0])
        0.25
    """
    y = np.asarray(labels, dtype=float).ravel()
    if y.size == 0:
        raise InterpError("no labels")
    return float(y.mean())


def majority_baseline(labels) -> float:
    """Accuracy of always predicting the more common class.

    Example:
        >>> majority_baseline([1, 0, 0, 0])
        0.75
    """
    p = class_balance(labels)
    return max(p, 1.0 - p)


class _Scorer(nn.Module):
    def __init__(self, kind: str, d: int, rank: int | None, gen: torch.Generator, scale: float = 1.0):
        super().__init__()
        self.kind = kind
        self.scale = scale  # multiplies the bilinear score of full / lowrank (1/√d in the paper's code)
        self.b = nn.Parameter(torch.zeros(()))
        if kind in ("linear", "diagonal"):
            self.w = nn.Parameter(torch.zeros(d))
        elif kind == "full":
            self.P = nn.Parameter(torch.zeros(d, d))
        else:  # lowrank: random start, since A = B = 0 has zero gradient
            scale = 0.1 / d ** 0.5
            self.A = nn.Parameter(torch.randn(rank, d, generator=gen) * scale)
            self.B = nn.Parameter(torch.randn(rank, d, generator=gen) * scale)

    def W(self) -> torch.Tensor:
        """The effective bilinear form (scale included): score = xᵀ W y + b."""
        if self.kind == "full":
            return (self.P + self.P.T) / 2 * self.scale
        if self.kind == "lowrank":
            return (self.A.T @ self.B + self.B.T @ self.A) / 2 * self.scale
        if self.kind == "diagonal":
            return torch.diag(self.w)
        raise InterpError("a linear probe has no bilinear form W")

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.kind == "linear":
            return (x + y) @ self.w + self.b
        if self.kind == "diagonal":
            return (x * y) @ self.w + self.b
        if self.kind == "full":
            return ((x @ self.W()) * y).sum(-1) + self.b
        ax, bx, ay, by = x @ self.A.T, x @ self.B.T, y @ self.A.T, y @ self.B.T
        return ((ax * by).sum(-1) + (bx * ay).sum(-1)) / 2 * self.scale + self.b


class PairwiseProbe(_PairEstimator):
    """A probe on pairs of token vectors: logit(same object | x, y); a scikit-learn binary classifier.

    Parameters: ``kind`` in linear, diagonal, full, lowrank; ``rank`` (lowrank
    only, 1 <= rank <= d); Adam ``lr`` and ``weight_decay``; ``epochs``;
    ``batch_size`` (pairs per step); ``seed``; ``bilinear_scale`` ("sqrt_d":
    the full / lowrank score is xᵀWy/√d, as in the authors' code; "none").

    Fitted: ``classes_``, ``n_features_in_`` (2·d: a pair side by side),
    ``mean_``, ``scale_`` (standardization from the training tokens, each token
    once), ``d_``, ``train_accuracy_``, ``losses_`` (per epoch),
    ``class_balance_``, ``majority_baseline_`` (of the training labels),
    ``score_scale_`` (1/√d or 1) and the parameters ``w_`` / ``W_`` (the
    effective form, scale included: score = zᵀ W_ z' + b_) / ``A_``, ``B_``
    (numpy, unscaled) and ``b_``.

    Example:
        probe = PairwiseProbe("lowrank", rank=8).fit(X_train, pairs_train, y_train)
        probe.score(X_test, pairs_test, y_test)  # accuracy; compare with majority_baseline(y_test)
        cross_val_score(PairwiseProbe("diagonal"), pair_features, y, cv=3)  # pairs side by side
    """

    def __init__(self, kind: str = "full", rank: int | None = None, lr: float = 1e-3, weight_decay: float = 0.01,
                 epochs: int = 30, batch_size: int = 256, seed: int = 0, bilinear_scale: str = "sqrt_d"):
        self.kind = kind
        self.rank = rank
        self.lr = lr
        self.weight_decay = weight_decay
        self.epochs = epochs
        self.batch_size = batch_size
        self.seed = seed
        self.bilinear_scale = bilinear_scale

    def _check_params(self, d: int) -> None:
        if self.kind not in KINDS:
            raise InterpError(f"unknown probe kind {self.kind!r}; use one of {', '.join(KINDS)}")
        if self.kind == "lowrank":
            if self.rank is None or int(self.rank) < 1:
                raise InterpError(f"a lowrank probe needs rank >= 1, got {self.rank}")
            if self.rank > d:
                raise InterpError(f"rank {self.rank} is larger than the feature size d={d}; use rank <= {d}")
        elif self.rank is not None:
            raise InterpError(f"rank is only used by kind='lowrank', not {self.kind!r}; leave it None")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or self.weight_decay < 0:
            raise InterpError("epochs and batch_size must be >= 1, lr > 0 and weight_decay >= 0")
        if self.bilinear_scale not in BILINEAR_SCALES:
            raise InterpError(f"bilinear_scale must be one of {', '.join(BILINEAR_SCALES)}, got "
                              f"{self.bilinear_scale!r}")

    def _z(self, X: torch.Tensor) -> torch.Tensor:
        return (X - torch.from_numpy(self.mean_)) / torch.from_numpy(self.scale_)

    def fit(self, X, y, labels=None) -> "PairwiseProbe":
        """``fit(X, y)`` with pairs side by side, or ``fit(tokens, pairs, labels)``; returns self."""
        tokens, pairs, target = self._fit_input(X, y, labels)
        self._check_params(tokens.shape[1])
        rows = torch.unique(pairs.flatten())
        self.d_ = tokens.shape[1]
        self.mean_ = tokens[rows].mean(0).numpy()
        self.scale_ = tokens[rows].std(0).clamp(min=1e-6).numpy()
        Z = self._z(tokens)
        gen = torch.Generator().manual_seed(self.seed)
        self.score_scale_ = (1.0 / self.d_ ** 0.5 if self.bilinear_scale == "sqrt_d" and
                             self.kind in ("full", "lowrank") else 1.0)
        net = _Scorer(self.kind, self.d_, self.rank, gen, self.score_scale_)
        opt = torch.optim.Adam(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        loss_fn = nn.BCEWithLogitsLoss()
        self.losses_ = []
        n = pairs.shape[0]
        for _ in range(self.epochs):
            order = torch.randperm(n, generator=gen)
            total = 0.0
            for s in range(0, n, self.batch_size):
                idx = order[s:s + self.batch_size]
                p = pairs[idx]
                loss = loss_fn(net(Z[p[:, 0]], Z[p[:, 1]]), target[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += loss.item() * len(idx)
            self.losses_.append(total / n)
        self.net_ = net.eval()
        self.b_ = float(net.b.detach())
        if self.kind in ("linear", "diagonal"):
            self.w_ = net.w.detach().numpy().copy()
        if self.kind in ("full", "lowrank", "diagonal"):
            self.W_ = net.W().detach().numpy().copy()
        if self.kind == "lowrank":
            self.A_, self.B_ = net.A.detach().numpy().copy(), net.B.detach().numpy().copy()
        y01 = target.numpy()
        self.class_balance_ = class_balance(y01)
        self.majority_baseline_ = majority_baseline(y01)
        self.train_accuracy_ = self._accuracy(tokens, pairs, self.classes_[y01.astype(np.int64)])
        return self

    def _decide(self, tokens: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
        Z = self._z(tokens)
        with torch.no_grad():
            return self.net_(Z[pairs[:, 0]], Z[pairs[:, 1]])

    def decision_function(self, X, pairs=None) -> np.ndarray:
        """Logits [n_pairs]: > 0 means 'same object' (``classes_[1]``)."""
        return super().decision_function(X, pairs)

    def predict_proba(self, X, pairs=None) -> np.ndarray:
        """[n_pairs, 2]: P(``classes_[0]``), P(``classes_[1]``, same object) per pair."""
        p = torch.sigmoid(self._decide(*self._input(X, pairs))).numpy()
        return np.stack([1 - p, p], axis=1)

    def subspace(self) -> np.ndarray:
        """Orthonormal basis [k, d] (raw, unstandardized coordinates) of the space the probe reads.

        For ``lowrank`` it is the span of the rows of A and B (k <= 2r); for
        ``full`` and ``diagonal`` the row space of W (eigenvectors with
        non-negligible eigenvalue). Since the probe reads z = (x - mean)/scale,
        a direction u in z-space is u / scale in x-space.
        """
        if not hasattr(self, "net_"):
            raise NotFitted("this probe is not fitted yet; call fit(X, pairs, labels) first")
        if self.kind == "linear":
            M = torch.from_numpy(self.w_)[None]
        elif self.kind == "lowrank":
            M = torch.cat([torch.from_numpy(self.A_), torch.from_numpy(self.B_)])
        else:
            evals, evecs = torch.linalg.eigh(torch.from_numpy(self.W_).double())
            keep = evals.abs() > 1e-6 * evals.abs().max()
            M = evecs[:, keep].T.float()
        M = M / torch.from_numpy(self.scale_)[None]
        u, s, vh = torch.linalg.svd(M.double(), full_matrices=False)
        return vh[s > 1e-8 * s.max()].float().numpy()


class SimilarityBaseline(_PairEstimator):
    """Threshold on cosine similarity or the dot product of raw vectors (no learned map).

    The threshold maximizes training accuracy. Fitted: ``classes_``,
    ``n_features_in_``, ``threshold_``, ``class_balance_``,
    ``majority_baseline_``, ``train_accuracy_``.

    Example:
        >>> import torch
        >>> X = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0]])
        >>> base = SimilarityBaseline("cosine").fit(X, [[0, 1], [0, 2]], [1, 0])
        >>> base.predict(X, [[1, 0], [1, 2]]).tolist()
        [1, 0]
    """

    def __init__(self, kind: str = "cosine"):
        self.kind = kind

    def _similarity(self, tokens: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
        x, y = tokens[pairs[:, 0]], tokens[pairs[:, 1]]
        if self.kind == "cosine":
            return torch.nn.functional.cosine_similarity(x, y, dim=-1)
        if self.kind == "dot":
            return (x * y).sum(-1)
        raise InterpError(f"unknown baseline {self.kind!r}; use 'cosine' or 'dot'")

    def similarity(self, X, pairs=None) -> np.ndarray:
        """The raw similarity of each pair [n_pairs] (pairs side by side, or tokens + ``pairs``)."""
        if pairs is None:
            return self._similarity(*_pair_rows(_as_float(X, pair_rows=True))).numpy()
        X = _as_float(X)
        return self._similarity(X, check_pairs(X, pairs)[0]).numpy()

    def fit(self, X, y, labels=None) -> "SimilarityBaseline":
        """``fit(X, y)`` with pairs side by side, or ``fit(tokens, pairs, labels)``; returns self."""
        tokens, pairs, target = self._fit_input(X, y, labels)
        s = self._similarity(tokens, pairs)
        order = torch.argsort(s)
        s_sorted, y_sorted = s[order], target[order]
        # threshold between consecutive sorted scores: accuracy = negatives below + positives above
        neg_below = torch.cat([torch.zeros(1), torch.cumsum(1 - y_sorted, 0)])
        pos_above = y_sorted.sum() - torch.cat([torch.zeros(1), torch.cumsum(y_sorted, 0)])
        best = int(torch.argmax(neg_below + pos_above))
        lo = s_sorted[best - 1] if best > 0 else s_sorted[0] - 1
        hi = s_sorted[best] if best < len(s_sorted) else s_sorted[-1] + 1
        self.threshold_ = float((lo + hi) / 2)
        y01 = target.numpy()
        self.class_balance_ = class_balance(y01)
        self.majority_baseline_ = majority_baseline(y01)
        self.train_accuracy_ = self._accuracy(tokens, pairs, self.classes_[y01.astype(np.int64)])
        return self

    def _decide(self, tokens: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
        # float32 minus the threshold: > 0 exactly where similarity > threshold (both in float32)
        return self._similarity(tokens, pairs) - self.threshold_


def evaluate_kinds(X_train, pairs_train, y_train, X_test, pairs_test, y_test,
                   kinds: Sequence[str] = KINDS + ("cosine", "dot"), rank: int = 16,
                   **probe_kw) -> dict[str, float]:
    """Test accuracy of each probe kind and baseline, plus ``majority_baseline`` and ``class_balance``.

    Example:
        evaluate_kinds(X, tr_pairs, tr_y, X, te_pairs, te_y, kinds=["linear", "full"])
    """
    out: dict[str, float] = {}
    for kind in kinds:
        if kind in ("cosine", "dot"):
            est = SimilarityBaseline(kind).fit(X_train, pairs_train, y_train)
        else:
            est = PairwiseProbe(kind, rank=rank if kind == "lowrank" else None, **probe_kw)
            est.fit(X_train, pairs_train, y_train)
        out[kind] = est.score(X_test, pairs_test, y_test)
    out["majority_baseline"] = majority_baseline(y_test)
    out["class_balance"] = class_balance(y_test)
    return out


def min_rank_within(rank_acc: dict[int, float], full_acc: float, points: float = 0.02) -> int | None:
    """Smallest rank whose accuracy is within ``points`` of the full probe (None if none is).

    Example:
        >>> min_rank_within({1: 0.6, 4: 0.79, 16: 0.81}, 0.8)
        4
    """
    ok = [r for r, a in sorted(rank_acc.items()) if a >= full_acc - points]
    return ok[0] if ok else None
