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


class EffectiveRank:
    """k at a variance threshold, relative rank and a bootstrap CI.

    Parameters: ``threshold`` (default 0.99), ``n_bootstrap`` resamples of
    tokens (0 disables the CI), ``max_bootstrap_tokens`` rows kept for the
    bootstrap, ``ci`` (default 0.95), ``seed``.

    Fitted: ``k_``, ``relative_k_``, ``eigenvalues_``, ``n_tokens_``, ``d_``,
    ``ci_`` (low, high) of the relative rank, ``bootstrap_k_``.
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
        if moments.n < d:
            raise InterpError(f"only {moments.n} tokens for {d} dimensions: a rank estimate needs at least as many "
                              f"tokens as dimensions (more is better); capture more text")
        self.eigenvalues_ = torch.linalg.eigvalsh(moments.covariance()).flip(0)
        self.k_ = k_for_threshold(self.eigenvalues_, self.threshold)
        self.d_, self.n_tokens_ = d, moments.n
        self.relative_k_ = self.k_ / d
        self.bootstrap_k_ = []
        if self.n_bootstrap and sample is not None and sample.shape[0] >= 2:
            gen = torch.Generator().manual_seed(self.seed)
            for _ in range(self.n_bootstrap):
                idx = torch.randint(0, sample.shape[0], (sample.shape[0],), generator=gen)
                m = _Moments(d)
                m.add(sample[idx])
                self.bootstrap_k_.append(k_for_threshold(torch.linalg.eigvalsh(m.covariance()), self.threshold))
            lo, hi = np.quantile(np.array(self.bootstrap_k_) / d, [(1 - self.ci) / 2, (1 + self.ci) / 2])
            self.ci_ = (float(lo), float(hi))
        else:
            self.ci_ = (float("nan"), float("nan"))
        return self

    def fit(self, X) -> "EffectiveRank":
        """X: [n_tokens, d] activations (tensor or array)."""
        X = torch.as_tensor(np.asarray(X) if not isinstance(X, torch.Tensor) else X)
        if X.dim() != 2:
            raise InterpError(f"X must be [tokens, d], got shape {tuple(X.shape)}")
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
