"""Effective rank of activations (arXiv 2508.16929): attention outputs are low-rank.

``EffectiveRank``: on mean-centered activations, the smallest k whose top-k
PCA eigenvalues explain at least ``threshold`` of the variance (k99 for the
default 0.99), the relative rank k/d, and a bootstrap confidence interval
over token samples. It fits from an array or streams an ``ActivationStore``
(float64 sums of x and xxᵀ, one shard in memory at a time).

The active-subspace SAE initialization that uses it lives in
``interp.analyzers.sae_init``.

Example:
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> X = torch.randn(2000, 5, generator=g) @ torch.randn(5, 20, generator=g)  # rank 5 in 20 dims
    >>> est = EffectiveRank(n_bootstrap=0).fit(X)
    >>> est.k_ <= 5, est.relative_k_ <= 0.25
    (True, True)
"""
from __future__ import annotations

import numpy as np
import torch
from sklearn.base import BaseEstimator

from ..errors import InterpError


def k_for_threshold(eigenvalues: torch.Tensor, threshold: float) -> int:
    """Smallest k whose top-k eigenvalues reach ``threshold`` of their sum."""
    ev = eigenvalues.double().clamp(min=0).sort(descending=True).values
    total = ev.sum()
    if total <= 0:
        raise InterpError("the activations have zero variance")
    cum = ev.cumsum(0) / total
    return int(torch.searchsorted(cum, torch.tensor(threshold, dtype=cum.dtype) - 1e-12).item()) + 1


class _Moments:
    """Streaming float64 count, sum and sum of outer products."""

    def __init__(self, d: int):
        self.n, self.s1, self.s2 = 0, torch.zeros(d, dtype=torch.float64), torch.zeros(d, d, dtype=torch.float64)

    def add(self, x: torch.Tensor) -> None:
        x = x.double()
        if not torch.isfinite(x).all():
            raise InterpError("activations contain NaN or infinite values")
        self.n += x.shape[0]
        self.s1 += x.sum(0)
        self.s2 += x.T @ x

    def covariance(self) -> torch.Tensor:
        mean = self.s1 / self.n
        return (self.s2 - self.n * torch.outer(mean, mean)) / max(self.n - 1, 1)


def _as_matrix(X) -> torch.Tensor:
    """[n, d] real tensor from a tensor, array or nested list; bad shapes and values raise ``InterpError``."""
    if isinstance(X, torch.Tensor):
        X = X.detach().cpu()
    elif hasattr(X, "toarray") or type(X).__module__.startswith("scipy.sparse"):
        raise InterpError("sparse input is not supported; pass a dense [tokens, d] array (X.toarray())")
    else:
        try:
            arr = np.asarray(X)
        except (TypeError, ValueError) as e:
            raise InterpError(f"X must be a numeric [tokens, d] array or tensor: {e}") from e
        if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            try:
                arr = arr.astype(np.float64)
            except (TypeError, ValueError) as e:
                raise InterpError(f"X must be numeric; got values of dtype {arr.dtype} ({e})") from e
        if not arr.flags.writeable:  # torch warns on read-only arrays; copy instead
            arr = arr.copy()
        X = torch.as_tensor(arr)
    if X.is_complex():
        raise InterpError("Complex data not supported: the rank of activations needs real values")
    if X.dim() != 2:
        raise InterpError(f"X must be [tokens, d], got shape {tuple(X.shape)}. Reshape your data: one token is [1, d]")
    if X.shape[1] == 0:
        raise InterpError(f"0 feature(s) (shape={tuple(X.shape)}) while a minimum of 1 is required: X has no "
                          f"dimensions to rank")
    return X


class EffectiveRank(BaseEstimator):
    """k at a variance threshold, relative rank and a bootstrap CI (a scikit-learn estimator).

    Parameters:
        threshold: variance fraction the top-k principal components must reach (0.99 gives k99).
        n_bootstrap: token resamples for the CI (0 disables it).
        max_bootstrap_tokens: rows kept (uniformly at random) for the bootstrap.
        ci: coverage of the bootstrap interval (0.95).
        seed: seed of the bootstrap sample and resamples.

    Fitted (numpy or plain Python values): ``k_``, ``relative_k_`` (k/d),
    ``eigenvalues_`` (descending, float64), ``n_tokens_``, ``d_``,
    ``n_features_in_`` (= ``d_``), ``ci_`` (low, high) of the relative rank,
    ``bootstrap_k_`` (k of each resample).

    Example:
        >>> import numpy as np
        >>> X = np.random.default_rng(0).normal(size=(500, 3)) @ np.ones((3, 8))  # rank 1 in 8 dims
        >>> EffectiveRank(n_bootstrap=0).fit(X).k_
        1
    """

    def __init__(self, threshold: float = 0.99, n_bootstrap: int = 50, max_bootstrap_tokens: int = 4000,
                 ci: float = 0.95, seed: int = 0):
        self.threshold = threshold
        self.n_bootstrap = n_bootstrap
        self.max_bootstrap_tokens = max_bootstrap_tokens
        self.ci = ci
        self.seed = seed

    def _finish(self, moments: _Moments, sample: torch.Tensor | None) -> "EffectiveRank":
        if not 0 < self.threshold <= 1:
            raise InterpError(f"threshold must be in (0, 1], got {self.threshold}")
        d = moments.s1.numel()
        if moments.n < d or moments.n < 2:
            raise InterpError(f"n_samples = {moments.n}: only {moments.n} tokens for {d} dimensions; a rank estimate "
                              f"needs at least as many tokens as dimensions and at least 2 (more is better); "
                              f"capture more text")
        eigenvalues = torch.linalg.eigvalsh(moments.covariance()).flip(0)
        self.k_ = k_for_threshold(eigenvalues, self.threshold)
        self.eigenvalues_ = eigenvalues.numpy()
        self.d_, self.n_tokens_ = d, moments.n
        self.n_features_in_ = d
        self.relative_k_ = self.k_ / d
        boot = []
        if self.n_bootstrap and sample is not None and sample.shape[0] >= 2:
            gen = torch.Generator().manual_seed(self.seed)
            for _ in range(self.n_bootstrap):
                idx = torch.randint(0, sample.shape[0], (sample.shape[0],), generator=gen)
                m = _Moments(d)
                m.add(sample[idx])
                boot.append(k_for_threshold(torch.linalg.eigvalsh(m.covariance()), self.threshold))
            lo, hi = np.quantile(np.array(boot) / d, [(1 - self.ci) / 2, (1 + self.ci) / 2])
            self.ci_ = (float(lo), float(hi))
        else:
            self.ci_ = (float("nan"), float("nan"))
        self.bootstrap_k_ = np.array(boot, dtype=np.int64)
        return self

    def fit(self, X, y=None) -> "EffectiveRank":
        """X: [n_tokens, d] activations (numpy array or torch tensor); ``y`` is ignored."""
        X = _as_matrix(X)
        m = _Moments(X.shape[1])
        m.add(X)
        gen = torch.Generator().manual_seed(self.seed)
        keep = torch.randperm(X.shape[0], generator=gen)[: self.max_bootstrap_tokens]
        return self._finish(m, X[keep].double())

    def fit_store(self, store, site: str) -> "EffectiveRank":
        """Stream one site of an ``ActivationStore`` (never loads it whole)."""
        from ..sites import parse_site

        key = str(parse_site(site))
        if key not in store.sites:
            raise InterpError(f"the store holds {', '.join(store.sites)}, not {key}")
        m, sample, seen = None, None, 0
        gen = torch.Generator().manual_seed(self.seed)
        for batch in store.iter_batches(key, batch_size=8192):
            m = m or _Moments(batch.shape[1])
            m.add(batch)
            # reservoir-style: keep a uniform random subset of rows for the bootstrap
            seen += batch.shape[0]
            pool = batch.double() if sample is None else torch.cat([sample, batch.double()])
            keep = torch.randperm(pool.shape[0], generator=gen)[: self.max_bootstrap_tokens]
            sample = pool[keep]
        if m is None:
            raise InterpError("the store is empty")
        return self._finish(m, sample)


def fit_store_sites(store, sites=None, threshold: float = 0.99, n_bootstrap: int = 50,
                    max_bootstrap_tokens: int = 4000, seed: int = 0, progress: bool = False) -> dict:
    """``{site: fitted EffectiveRank}`` for many sites of a store in one pass over its shards.

    Example:
        ranks = fit_store_sites(ActivationStore("acts/"), ["attn_out.3", "mlp_out.3"])
        ranks["attn_out.3"].relative_k_
    """
    from tqdm.auto import tqdm

    from ..sites import parse_site

    keys = [str(parse_site(s)) for s in (sites if sites is not None else store.sites)]
    missing = [k for k in keys if k not in store.sites]
    if missing:
        raise InterpError(f"the store holds {', '.join(store.sites)}, not {', '.join(missing)}")
    if not len(store):
        raise InterpError("the store is empty")
    moments: dict = {}
    samples: dict = {}
    gen = torch.Generator().manual_seed(seed)
    for i in tqdm(range(len(store)), desc="rank", unit="shard", disable=not progress):
        acts = store.shard(i)
        for k in keys:
            rows = acts.tokens(k)
            moments.setdefault(k, _Moments(rows.shape[1])).add(rows)
            pool = rows.double() if k not in samples else torch.cat([samples[k], rows.double()])
            samples[k] = pool[torch.randperm(pool.shape[0], generator=gen)[:max_bootstrap_tokens]]
    return {k: EffectiveRank(threshold, n_bootstrap, max_bootstrap_tokens, seed=seed)._finish(moments[k], samples[k])
            for k in keys}
