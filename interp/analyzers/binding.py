"""IsSameObject pairwise probes (Li et al., arXiv 2510.24709): do two tokens belong together?

A probe scores a pair of token vectors (x, y) from one layer with a logit:

- ``linear``:   wᵀx + wᵀy + b — a sum of per-token scores; it cannot express a
  relation between x and y, so it is the baseline a relational probe must beat;
- ``diagonal``: xᵀ diag(w) y + b;
- ``full``:     xᵀ W y + b with W symmetric;
- ``lowrank``:  W = (AᵀB + BᵀA)/2 with A, B ∈ R^{r×d}; the smallest r that
  matches the full probe is the dimension of the binding subspace.

Features are standardized with statistics of the training tokens. Training
is Adam on the binary cross-entropy (lr 1e-3, weight decay 0.01, as in the
paper). ``SimilarityBaseline`` thresholds cosine similarity or the dot
product. Every accuracy should be read beside ``majority_baseline`` and
``class_balance`` of the same labels.

Example:
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> X = torch.randn(40, 6, generator=g)
    >>> pairs = torch.tensor([[i, (i + 1) % 40] for i in range(40)])
    >>> labels = torch.arange(40) % 2
    >>> probe = PairwiseProbe("diagonal", epochs=2).fit(X, pairs, labels)
    >>> probe.predict_proba(X, pairs).shape
    torch.Size([40])
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..errors import InterpError

KINDS = ("linear", "diagonal", "full", "lowrank")


def _as_float(X, what: str = "X") -> torch.Tensor:
    X = torch.as_tensor(np.asarray(X) if not isinstance(X, torch.Tensor) else X)
    if X.dim() != 2:
        raise InterpError(f"{what} must be a 2-D array [n_tokens, d], got shape {tuple(X.shape)}")
    if not torch.is_floating_point(X):
        X = X.float()
    if not torch.isfinite(X).all():
        raise InterpError(f"{what} contains NaN or infinite values; check the captured activations")
    return X.detach().float()


def check_pairs(X: torch.Tensor, pairs, labels=None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Validate ``pairs`` [n_pairs, 2] (row indices of X) and optional 0/1 ``labels`` [n_pairs]."""
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
    labels = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels).flatten()
    if labels.shape[0] != pairs.shape[0]:
        raise InterpError(f"got {pairs.shape[0]} pairs but {labels.shape[0]} labels; give one label per pair")
    values = set(torch.unique(labels).tolist())
    if not values <= {0, 1, 0.0, 1.0, True, False}:
        raise InterpError(f"labels must be 0/1 (same object or not), got values {sorted(values)[:5]}")
    return pairs, labels.float()


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


def _one_class_check(labels: torch.Tensor) -> None:
    if labels.min() == labels.max():
        raise InterpError(f"all {labels.shape[0]} training labels are {int(labels[0])}; a pairwise probe needs "
                          f"both same-object (1) and different-object (0) pairs")


class _Scorer(nn.Module):
    def __init__(self, kind: str, d: int, rank: int | None, gen: torch.Generator):
        super().__init__()
        self.kind = kind
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
        if self.kind == "full":
            return (self.P + self.P.T) / 2
        if self.kind == "lowrank":
            return (self.A.T @ self.B + self.B.T @ self.A) / 2
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
        return ((ax * by).sum(-1) + (bx * ay).sum(-1)) / 2 + self.b


class PairwiseProbe:
    """A probe on pairs of token vectors: logit(same object | x, y).

    Parameters: ``kind`` in linear, diagonal, full, lowrank; ``rank`` (lowrank
    only, 1 <= rank <= d); Adam ``lr`` and ``weight_decay``; ``epochs``;
    ``batch_size`` (pairs per step); ``seed``.

    Fitted: ``mean_``, ``scale_`` (standardization from training tokens),
    ``d_``, ``train_accuracy_``, ``losses_`` (per epoch), ``class_balance_``,
    ``majority_baseline_`` (of the training labels) and the parameters
    ``w_`` / ``W_`` / ``A_``, ``B_`` and ``b_``.

    Example:
        probe = PairwiseProbe("lowrank", rank=8).fit(X_train, pairs_train, y_train)
        probe.score(X_test, pairs_test, y_test)  # accuracy; compare with majority_baseline(y_test)
    """

    def __init__(self, kind: str = "full", rank: int | None = None, lr: float = 1e-3, weight_decay: float = 0.01,
                 epochs: int = 30, batch_size: int = 256, seed: int = 0):
        self.kind = kind
        self.rank = rank
        self.lr = lr
        self.weight_decay = weight_decay
        self.epochs = epochs
        self.batch_size = batch_size
        self.seed = seed

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

    def _z(self, X: torch.Tensor) -> torch.Tensor:
        if not hasattr(self, "mean_"):
            raise InterpError("this probe is not fitted yet; call fit(X, pairs, labels) first")
        if X.shape[1] != self.d_:
            raise InterpError(f"X has {X.shape[1]} features but the probe was fitted on {self.d_}")
        return (X - self.mean_) / self.scale_

    def fit(self, X, pairs, labels) -> "PairwiseProbe":
        X = _as_float(X)
        pairs, y = check_pairs(X, pairs, labels)
        self._check_params(X.shape[1])
        _one_class_check(y)
        rows = torch.unique(pairs.flatten())
        self.d_ = X.shape[1]
        self.mean_ = X[rows].mean(0)
        self.scale_ = X[rows].std(0).clamp(min=1e-6)
        Z = self._z(X)
        gen = torch.Generator().manual_seed(self.seed)
        net = _Scorer(self.kind, self.d_, self.rank, gen)
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
                loss = loss_fn(net(Z[p[:, 0]], Z[p[:, 1]]), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += loss.item() * len(idx)
            self.losses_.append(total / n)
        self.net_ = net.eval()
        self.b_ = float(net.b.detach())
        if self.kind in ("linear", "diagonal"):
            self.w_ = net.w.detach().clone()
        if self.kind in ("full", "lowrank", "diagonal"):
            self.W_ = net.W().detach().clone()
        if self.kind == "lowrank":
            self.A_, self.B_ = net.A.detach().clone(), net.B.detach().clone()
        self.class_balance_ = class_balance(y)
        self.majority_baseline_ = majority_baseline(y)
        self.train_accuracy_ = self.score(X, pairs, y)
        return self

    def decision_function(self, X, pairs) -> torch.Tensor:
        """Logits [n_pairs]: > 0 means 'same object'."""
        X = _as_float(X)
        pairs, _ = check_pairs(X, pairs)
        Z = self._z(X)
        with torch.no_grad():
            return self.net_(Z[pairs[:, 0]], Z[pairs[:, 1]])

    def predict_proba(self, X, pairs) -> torch.Tensor:
        """P(same object) per pair [n_pairs]."""
        return torch.sigmoid(self.decision_function(X, pairs))

    def predict(self, X, pairs) -> torch.Tensor:
        """0/1 per pair."""
        return (self.decision_function(X, pairs) > 0).long()

    def score(self, X, pairs, labels) -> float:
        """Accuracy on labelled pairs (read it beside ``majority_baseline(labels)``)."""
        X = _as_float(X)
        pairs, y = check_pairs(X, pairs, labels)
        return float((self.predict(X, pairs).float() == y).float().mean())

    def subspace(self) -> torch.Tensor:
        """Orthonormal basis [k, d] (raw, unstandardized coordinates) of the space the probe reads.

        For ``lowrank`` it is the span of the rows of A and B (k <= 2r); for
        ``full`` and ``diagonal`` the row space of W (eigenvectors with
        non-negligible eigenvalue). Since the probe reads z = (x - mean)/scale,
        a direction u in z-space is u / scale in x-space.
        """
        if not hasattr(self, "net_"):
            raise InterpError("this probe is not fitted yet; call fit(X, pairs, labels) first")
        if self.kind == "linear":
            M = self.w_[None]
        elif self.kind == "lowrank":
            M = torch.cat([self.A_, self.B_])
        else:
            evals, evecs = torch.linalg.eigh(self.W_.double())
            keep = evals.abs() > 1e-6 * evals.abs().max()
            M = evecs[:, keep].T.float()
        M = M / self.scale_[None]
        u, s, vh = torch.linalg.svd(M.double(), full_matrices=False)
        return vh[s > 1e-8 * s.max()].float()


class SimilarityBaseline:
    """Threshold on cosine similarity or the dot product of raw vectors (no learned map).

    The threshold maximizes training accuracy. Fitted: ``threshold_``,
    ``class_balance_``, ``majority_baseline_``, ``train_accuracy_``.

    Example:
        >>> import torch
        >>> X = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0]])
        >>> base = SimilarityBaseline("cosine").fit(X, [[0, 1], [0, 2]], [1, 0])
        >>> base.predict(X, [[1, 0], [1, 2]]).tolist()
        [1, 0]
    """

    def __init__(self, kind: str = "cosine"):
        self.kind = kind

    def similarity(self, X, pairs) -> torch.Tensor:
        """The raw similarity of each pair [n_pairs]."""
        X = _as_float(X)
        pairs, _ = check_pairs(X, pairs)
        x, y = X[pairs[:, 0]], X[pairs[:, 1]]
        if self.kind == "cosine":
            return torch.nn.functional.cosine_similarity(x, y, dim=-1)
        if self.kind == "dot":
            return (x * y).sum(-1)
        raise InterpError(f"unknown baseline {self.kind!r}; use 'cosine' or 'dot'")

    def fit(self, X, pairs, labels) -> "SimilarityBaseline":
        X = _as_float(X)
        pairs, y = check_pairs(X, pairs, labels)
        _one_class_check(y)
        s = self.similarity(X, pairs)
        order = torch.argsort(s)
        s_sorted, y_sorted = s[order], y[order]
        # threshold between consecutive sorted scores: accuracy = negatives below + positives above
        neg_below = torch.cat([torch.zeros(1), torch.cumsum(1 - y_sorted, 0)])
        pos_above = y_sorted.sum() - torch.cat([torch.zeros(1), torch.cumsum(y_sorted, 0)])
        best = int(torch.argmax(neg_below + pos_above))
        lo = s_sorted[best - 1] if best > 0 else s_sorted[0] - 1
        hi = s_sorted[best] if best < len(s_sorted) else s_sorted[-1] + 1
        self.threshold_ = float((lo + hi) / 2)
        self.class_balance_ = class_balance(y)
        self.majority_baseline_ = majority_baseline(y)
        self.train_accuracy_ = self.score(X, pairs, y)
        return self

    def predict(self, X, pairs) -> torch.Tensor:
        if not hasattr(self, "threshold_"):
            raise InterpError("this baseline is not fitted yet; call fit(X, pairs, labels) first")
        return (self.similarity(X, pairs) > self.threshold_).long()

    def score(self, X, pairs, labels) -> float:
        X = _as_float(X)
        pairs, y = check_pairs(X, pairs, labels)
        return float((self.predict(X, pairs).float() == y).float().mean())


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
