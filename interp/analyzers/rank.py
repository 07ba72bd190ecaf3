"""Effective rank of activations (arXiv 2508.16929): attention outputs are low-rank.

``EffectiveRank``: on mean-centered activations, the smallest k whose top-k
PCA eigenvalues explain at least ``threshold`` of the variance (k99 for the
default 0.99), the relative rank k/d, and a percentile bootstrap interval
over passages (whole passages are resampled, never single tokens of a
passage, so the interval respects the unit the data are split by). It fits
from an array (``groups`` name each row's passage) or streams an
``ActivationStore`` (float64 sums of x and xxᵀ per block of passages, one
shard in memory at a time).

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



def _block_of_group(n_groups: int, n_blocks: int, seed: int) -> tuple[np.ndarray, int]:
    """Each group's block: whole groups dealt at random into min(n_blocks, n_groups) blocks.

    Resampling blocks of whole groups (passages) keeps every group on one side of a resample, so the
    interval reflects variation between passages, not between tokens of the same passage.
    """
    nb = max(1, min(n_blocks, n_groups))
    order = np.random.default_rng(seed).permutation(n_groups)
    block = np.empty(n_groups, dtype=np.int64)
    block[order] = np.arange(n_groups) % nb
    return block, nb


def _bootstrap_ks(blocks: list[_Moments], n_bootstrap: int, threshold: float, seed: int) -> np.ndarray:
    """k of each resample: blocks drawn with replacement, their moments summed (no token is copied)."""
    s2 = torch.stack([b.s2 for b in blocks])
    s1 = torch.stack([b.s1 for b in blocks])
    n = torch.tensor([float(b.n) for b in blocks], dtype=torch.float64)
    rng = np.random.default_rng(seed + 1)
    ks = []
    for _ in range(n_bootstrap):
        counts = torch.from_numpy(np.bincount(rng.integers(0, len(blocks), len(blocks)), minlength=len(blocks))
                                  .astype(np.float64))
        m = _Moments(s1.shape[1])
        m.n = float(counts @ n)
        m.s1 = counts @ s1
        m.s2 = torch.tensordot(counts, s2, dims=1)
        ks.append(k_for_threshold(torch.linalg.eigvalsh(m.covariance()), threshold))
    return np.array(ks, dtype=np.int64)


class EffectiveRank(BaseEstimator):
    """k at a variance threshold, relative rank and a group-bootstrap CI (a scikit-learn estimator).

    Parameters:
        threshold: variance fraction the top-k principal components must reach (0.99 gives k99).
        n_bootstrap: resamples for the CI (0 disables it).
        n_blocks: the groups (passages; tokens when no groups are given) are dealt into at most this many
            blocks of whole groups, and the bootstrap resamples blocks with replacement: a percentile
            bootstrap over groups, never splitting a group.
        ci: coverage of the percentile interval (0.95).
        seed: seed of the block assignment and the resamples.

    Fitted (numpy or plain Python values): ``k_``, ``relative_k_`` (k/d),
    ``eigenvalues_`` (descending, float64), ``n_tokens_``, ``d_``,
    ``n_features_in_`` (= ``d_``), ``ci_`` (low, high): the percentile interval
    of the relative rank, ``ci_bias_corrected_``: the basic (reflected)
    interval ``2·k/d − quantiles``, ``bootstrap_k_`` (k of each resample),
    ``bootstrap_bias_`` (mean resample k/d minus the point estimate),
    ``n_groups_``, ``n_blocks_``. k99 grows with the number of passages, so
    resamples with repeated passages read low: the percentile interval can sit
    below the point estimate (``bootstrap_bias_`` < 0 says so); the basic
    interval corrects for that bias.

    Example:
        >>> import numpy as np
        >>> X = np.random.default_rng(0).normal(size=(500, 3)) @ np.ones((3, 8))  # rank 1 in 8 dims
        >>> EffectiveRank(n_bootstrap=0).fit(X).k_
        1
    """

    def __init__(self, threshold: float = 0.99, n_bootstrap: int = 50, n_blocks: int = 40, ci: float = 0.95,
                 seed: int = 0):
        self.threshold = threshold
        self.n_bootstrap = n_bootstrap
        self.n_blocks = n_blocks
        self.ci = ci
        self.seed = seed

    def _finish(self, blocks: list[_Moments], n_groups: int) -> "EffectiveRank":
        if not 0 < self.threshold <= 1:
            raise InterpError(f"threshold must be in (0, 1], got {self.threshold}")
        blocks = [b for b in blocks if b.n > 0]
        if not blocks:
            raise InterpError("0 sample(s) (n_samples = 0): no tokens to estimate a rank from; capture more text")
        d = blocks[0].s1.numel()
        total = _Moments(d)
        for b in blocks:
            total.n += b.n
            total.s1 += b.s1
            total.s2 += b.s2
        if total.n < d or total.n < 2:
            raise InterpError(f"n_samples = {total.n}: only {total.n} tokens for {d} dimensions; a rank estimate "
                              f"needs at least as many tokens as dimensions and at least 2 (more is better); "
                              f"capture more text")
        eigenvalues = torch.linalg.eigvalsh(total.covariance()).flip(0)
        self.k_ = k_for_threshold(eigenvalues, self.threshold)
        self.eigenvalues_ = eigenvalues.numpy()
        self.d_, self.n_tokens_, self.n_features_in_ = d, int(total.n), d
        self.relative_k_ = self.k_ / d
        self.n_groups_, self.n_blocks_ = int(n_groups), len(blocks)
        boot = np.zeros(0, dtype=np.int64)
        nan = float("nan")
        self.ci_, self.ci_bias_corrected_, self.bootstrap_bias_ = (nan, nan), (nan, nan), nan
        if self.n_bootstrap and len(blocks) >= 2:
            boot = _bootstrap_ks(blocks, self.n_bootstrap, self.threshold, self.seed)
            lo, hi = np.quantile(boot / d, [(1 - self.ci) / 2, (1 + self.ci) / 2])
            self.ci_ = (float(lo), float(hi))
            # k99 grows with the number of passages, so resamples (fewer distinct passages) sit low and the
            # percentile interval inherits that bias; the basic interval 2k - q reflects it back
            self.ci_bias_corrected_ = (float(2 * self.relative_k_ - hi), float(2 * self.relative_k_ - lo))
            self.bootstrap_bias_ = float(boot.mean() / d - self.relative_k_)
        self.bootstrap_k_ = boot
        return self

    def fit(self, X, y=None, groups=None) -> "EffectiveRank":
        """X: [n_tokens, d] activations (numpy or torch); ``groups[i]`` names row i's passage (None: each row
        is its own group, a token bootstrap); ``y`` is ignored."""
        X = _as_matrix(X)
        if groups is None:
            inv = np.arange(X.shape[0])
        else:
            groups = np.asarray(groups)
            if groups.shape != (X.shape[0],):
                raise InterpError(f"groups must name one group per row of X ({X.shape[0]}), got shape "
                                  f"{groups.shape}")
            inv = np.unique(groups, return_inverse=True)[1].reshape(-1)
        n_groups = int(inv.max()) + 1 if len(inv) else 0
        block_of_group, nb = _block_of_group(n_groups, self.n_blocks, self.seed)
        row_block = torch.from_numpy(block_of_group[inv])
        blocks = [_Moments(X.shape[1]) for _ in range(nb)]
        for b in range(nb):
            blocks[b].add(X[row_block == b])
        return self._finish(blocks, n_groups)

    def fit_store(self, store, site: str) -> "EffectiveRank":
        """Stream one site of an ``ActivationStore`` (never loads it whole); groups are the stored passages."""
        from ..sites import parse_site

        key = str(parse_site(site))
        if key not in store.sites:
            raise InterpError(f"the store holds {', '.join(store.sites)}, not {key}")
        return fit_store_sites(store, [key], self.threshold, self.n_bootstrap, self.n_blocks, self.seed,
                               ci=self.ci)[key]


def fit_store_sites(store, sites=None, threshold: float = 0.99, n_bootstrap: int = 50, n_blocks: int = 40,
                    seed: int = 0, progress: bool = False, ci: float = 0.95,
                    memory_bytes: int = 1_500_000_000) -> dict:
    """``{site: fitted EffectiveRank}`` for many sites of a store, grouped by stored passage.

    Per-block float64 moments (Σx, Σxxᵀ of whole passages) are kept for as many sites as fit in
    ``memory_bytes``; more sites take more passes over the shards.

    Example:
        ranks = fit_store_sites(ActivationStore("acts/"), ["attn_out.3", "mlp_out.3"])
        ranks["attn_out.3"].relative_k_, ranks["attn_out.3"].ci_
    """
    from tqdm.auto import tqdm

    from ..sites import parse_site

    keys = [str(parse_site(s)) for s in (sites if sites is not None else store.sites)]
    missing = [k for k in keys if k not in store.sites]
    if missing:
        raise InterpError(f"the store holds {', '.join(store.sites)}, not {', '.join(missing)}")
    if not len(store):
        raise InterpError("the store is empty")
    block_of_passage, nb = _block_of_group(store.n_examples, n_blocks, seed)
    d = store.shard(0).tokens(keys[0]).shape[1]
    per_site = nb * d * d * 8
    chunk = max(1, memory_bytes // max(per_site, 1))
    out: dict = {}
    for c in range(0, len(keys), chunk):
        part = keys[c:c + chunk]
        blocks = {k: [_Moments(d) for _ in range(nb)] for k in part}
        for i in tqdm(range(len(store)), desc="rank", unit="shard", disable=not progress):
            acts = store.shard(i)
            start = store.manifest["shards"][i]["start"]
            row_block = torch.from_numpy(block_of_passage[start + acts.mask.nonzero()[:, 0].numpy()])
            present = row_block.unique().tolist()
            for k in part:
                rows = acts.tokens(k)
                for b in present:
                    blocks[k][b].add(rows[row_block == b])
        for k in part:
            est = EffectiveRank(threshold, n_bootstrap, n_blocks, ci=ci, seed=seed)
            out[k] = est._finish(blocks[k], store.n_examples)
    return {k: out[k] for k in keys}
