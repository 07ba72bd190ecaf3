"""Streaming analyzers (issue 20, part 5): difference of means, the Latent Guard and the effective rank fitted
from an ActivationStore one shard at a time equal the in-memory fits (float64 sums in another order:
measured differences ~1e-16, asserted at 1e-10 relative)."""
import numpy as np
import pytest
import torch

from interp.analyzers.harmfulness import LatentGuard
from interp.analyzers.rank import EffectiveRank
from interp.analyzers.refusal import DiffOfMeans
from interp.errors import InterpError

PROMPTS = [f"Tell me fact number {i} about {'bread cake sea sky fox dog'.split()[i % 6]}." for i in range(23)]
SITES = ["resid_post.0", "resid_post.1"]
Y = np.array([i % 3 == 0 for i in range(len(PROMPTS))], dtype=int)


@pytest.fixture(scope="module")
def last_store(tiny_llama, tmp_path_factory):
    return tiny_llama.capture_to_store(PROMPTS, tmp_path_factory.mktemp("s") / "last", SITES, "last", shard_size=5,
                                       progress=False)


def grid(store) -> torch.Tensor:
    acts = store.load()
    return torch.stack([acts[k] for k in SITES], 1)  # [examples, sites, positions, d]


def test_diff_of_means_from_store_equals_fit(last_store):
    X = grid(last_store)
    mem = DiffOfMeans(positive=1).fit(X, Y)
    streamed = DiffOfMeans(positive=1).fit_store(last_store, Y)
    np.testing.assert_allclose(streamed.direction_, mem.direction_, rtol=1e-10, atol=1e-12)
    assert streamed.direction_.shape == (2, 1, X.shape[-1])
    # partial_fit in any batching gives the same
    est = DiffOfMeans(positive=1)
    for s in range(0, len(Y), 4):
        est.partial_fit(X[s:s + 4], Y[s:s + 4], classes=[0, 1])
    np.testing.assert_allclose(est.direction_, mem.direction_, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(est.transform(X), mem.transform(X), rtol=1e-9)


def test_diff_of_means_partial_fit_checks():
    with pytest.raises(InterpError, match="classes"):
        DiffOfMeans().partial_fit([[1.0]], [1])
    est = DiffOfMeans().partial_fit([[1.0], [2.0]], [1, 0])
    with pytest.raises(InterpError, match="not among classes"):
        est.partial_fit([[1.0]], [7])
    with pytest.raises(InterpError, match="one label per stored prompt"):
        pass_store = type("S", (), {"complete": True, "n_examples": 3, "path": "x", "manifest": {}})()
        DiffOfMeans().fit_store(pass_store, [0, 1])


def test_latent_guard_from_store_equals_fit(last_store):
    X = grid(last_store)[:, :, 0]  # [examples, layers, d]
    mem = LatentGuard().fit(X, Y)
    streamed = LatentGuard().fit_store(last_store, Y)
    np.testing.assert_allclose(streamed.harmful_centroid_, mem.harmful_centroid_, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(streamed.harmless_centroid_, mem.harmless_centroid_, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(streamed.calibration_, mem.calibration_, rtol=1e-6)
    np.testing.assert_allclose(streamed.belief_score(X), mem.belief_score(X), rtol=1e-9, atol=1e-12)


def test_latent_guard_store_needs_one_position(tiny_llama, tmp_path):
    store = tiny_llama.capture_to_store(PROMPTS, tmp_path / "s", SITES, "-2:", shard_size=10, progress=False)
    with pytest.raises(InterpError, match="one captured position"):
        LatentGuard().fit_store(store, Y)


def test_effective_rank_from_store_equals_fit(tiny_llama, tmp_path):
    store = tiny_llama.capture_to_store(PROMPTS * 3, tmp_path / "s", ["attn_out.1"], "all", shard_size=9,
                                        progress=False)
    acts = store.load()
    rows = acts.tokens("attn_out.1")
    groups = acts.mask.nonzero()[:, 0].numpy()  # each token's prompt (passage)
    mem = EffectiveRank(n_bootstrap=20, n_blocks=10).fit(rows, groups=groups)
    streamed = EffectiveRank(n_bootstrap=20, n_blocks=10).fit_store(store, "attn_out.1")
    assert streamed.k_ == mem.k_ and streamed.n_tokens_ == mem.n_tokens_
    np.testing.assert_allclose(streamed.eigenvalues_, mem.eigenvalues_, rtol=1e-8, atol=1e-12)
    np.testing.assert_array_equal(streamed.bootstrap_k_, mem.bootstrap_k_)
