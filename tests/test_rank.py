"""EffectiveRank (a scikit-learn estimator), the rank experiment and ``interp rank``."""
import pytest
import torch

from interp import InterpError
from interp.analyzers.rank import EffectiveRank, fit_store_sites, k_for_threshold


def test_k_for_threshold():
    assert k_for_threshold(torch.tensor([5.0, 4.0, 1.0]), 0.9) == 2
    assert k_for_threshold(torch.tensor([1.0, 1.0, 1.0, 1.0]), 0.99) == 4
    assert k_for_threshold(torch.tensor([1.0, 0.0]), 0.99) == 1


def test_rank_of_low_rank_data_and_ci():
    g = torch.Generator().manual_seed(0)
    low = torch.randn(3000, 8, generator=g) @ torch.randn(8, 32, generator=g)
    est = EffectiveRank(n_bootstrap=20).fit(low + 0.001 * torch.randn(3000, 32, generator=g))
    assert est.k_ <= 8 and est.d_ == 32 and est.relative_k_ == est.k_ / 32
    full = EffectiveRank(n_bootstrap=0).fit(torch.randn(3000, 32, generator=g))
    assert full.k_ >= 28


def _passages(n_passages=80, tokens=30, d=24, seed=0, offset=2.0):
    """Each passage has its own offset (between-passage variance), tokens share a 12-direction basis."""
    basis = torch.randn(12, d, generator=torch.Generator().manual_seed(100))
    g = torch.Generator().manual_seed(seed)
    scales = torch.linspace(3.0, 0.05, 12)
    rows = [(torch.randn(tokens, 12, generator=g) * scales) @ basis + torch.randn(d, generator=g) * offset
            for _ in range(n_passages)]
    return torch.cat(rows), torch.arange(n_passages).repeat_interleave(tokens).numpy()


def test_group_bootstrap_deals_whole_passages_into_blocks():
    from interp.analyzers.rank import _block_of_group

    block, nb = _block_of_group(80, 40, 1)
    assert nb == 40 and sorted(set(block.tolist())) == list(range(40))
    assert all((block == b).sum() == 2 for b in range(40))  # 80 passages dealt evenly, none split
    X, groups = _passages()
    est = EffectiveRank(n_bootstrap=40, n_blocks=40, seed=1).fit(X, groups=groups)
    assert est.n_groups_ == 80 and est.n_blocks_ == 40 and len(est.bootstrap_k_) == 40
    with pytest.raises(InterpError, match="one group per row"):
        EffectiveRank().fit(X, groups=groups[:-1])


def test_passage_bootstrap_is_wider_than_a_token_bootstrap():
    """Tokens of a passage share its offset; a token bootstrap sees none of the spread between passages."""
    X, groups = _passages(seed=0)
    by_passage = EffectiveRank(n_bootstrap=40, seed=1).fit(X, groups=groups)
    by_token = EffectiveRank(n_bootstrap=40, seed=1).fit(X)
    # measured: sd of resample k 0.26 by passage, 0.0 by token
    assert by_passage.bootstrap_k_.std() > by_token.bootstrap_k_.std() + 0.1


def test_bias_corrected_interval_moves_toward_the_large_sample_value():
    """k99 grows with the number of passages: the percentile interval sits low, the basic interval corrects it."""
    X, groups = _passages(seed=0)
    est = EffectiveRank(n_bootstrap=40, seed=1).fit(X, groups=groups)
    big = EffectiveRank(n_bootstrap=0).fit(_passages(3000, 10, seed=99)[0]).relative_k_
    # measured: point 0.792, percentile (0.749, 0.792), basic (0.792, 0.834), 3,000 passages 0.875
    assert est.bootstrap_bias_ < 0 and est.relative_k_ < big
    pct_mid, basic_mid = sum(est.ci_) / 2, sum(est.ci_bias_corrected_) / 2
    assert abs(basic_mid - big) < abs(pct_mid - big) - 0.02
    assert est.ci_bias_corrected_[0] == pytest.approx(2 * est.relative_k_ - est.ci_[1])


def test_store_streaming_matches_in_memory(tmp_path, tiny_llama):
    prompts = [f"Tell me fact number {i} about the sea and the sky." for i in range(12)]
    store = tiny_llama.capture_to_store(prompts, tmp_path / "s", ["attn_out.1"], "all", shard_size=4, progress=False)
    mem = store.load().tokens("attn_out.1")
    a = EffectiveRank(n_bootstrap=0).fit(mem)
    b = EffectiveRank(n_bootstrap=5).fit_store(store, "blocks.1.hook_attn_out")
    assert a.k_ == b.k_
    torch.testing.assert_close(a.eigenvalues_, b.eigenvalues_)
    with pytest.raises(InterpError, match="not"):
        EffectiveRank().fit_store(store, "mlp_out.1")


def test_rank_bad_input():
    with pytest.raises(InterpError, match="tokens for 16 dimensions"):
        EffectiveRank().fit(torch.randn(10, 16))
    bad = torch.randn(100, 4)
    bad[3, 1] = float("nan")
    with pytest.raises(InterpError, match="NaN"):
        EffectiveRank().fit(bad)


def test_fit_store_sites_one_pass_matches_fit_store(tmp_path, tiny_llama):
    prompts = [f"Passage {i}: the river ran past the mill and the miller sang." for i in range(10)]
    store = tiny_llama.capture_to_store(prompts, tmp_path / "s", ["attn_out.0", "mlp_out.1"], "1:", chat=False,
                                        shard_size=3, progress=False)
    fits = fit_store_sites(store, n_bootstrap=4)
    assert set(fits) == {"attn_out.0", "mlp_out.1"}
    single = EffectiveRank(n_bootstrap=0).fit_store(store, "mlp_out.1")
    assert fits["mlp_out.1"].k_ == single.k_ and fits["mlp_out.1"].n_tokens_ == store.n_tokens
    with pytest.raises(InterpError, match="not resid_post.0"):
        fit_store_sites(store, ["resid_post.0"])


@pytest.mark.slow
def test_attention_rank_below_mlp_on_held_out_passages_smollm(tmp_path):
    """The paper's claim on SmolLM2, read on test passages the run never looked at before."""
    import json

    from interp.cli import main

    assert main(["rank", "smollm2-135m-instruct", "--out", str(tmp_path), "--layers", "3", "9", "15",
                 "--passages", "60", "--max-tokens", "64", "--bootstrap", "10"]) == 0
    r = json.loads((tmp_path / "report.json").read_text())
    assert r["protocol"]["selected_on"] == "validation" and r["protocol"]["split_unit"] == "passage"
    assert all(h["split"].startswith("test") for h in r["summary"])
    attn, mlp = r["relative_k99"]["attn_out"], r["relative_k99"]["mlp_out"]
    gaps = [m - a for a, m in zip(attn, mlp)]
    # measured (seed 0, 36 test passages, 2,268 tokens): gaps 0.354, 0.184, 0.405 (mean 0.314; attention
    # 0.48 0.53 0.40, MLP 0.83 0.71 0.81); the paper's gap is ≈ 0.3. Margins: every layer's gap above 0.08
    # (0.10 below the smallest measured), the mean above 0.15 (the project's target; 0.16 below measured)
    assert min(gaps) > 0.08 and sum(gaps) / len(gaps) > 0.15, gaps
    assert (tmp_path / "report.html").stat().st_size > 10_000


# ------------------------------------------------------------------ scikit-learn contract

def test_effective_rank_clone_params_pipeline():
    import numpy as np
    from sklearn.base import clone
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    est = EffectiveRank(threshold=0.9, n_bootstrap=3, seed=4)
    twin = clone(est)
    assert twin.get_params() == est.get_params() and twin is not est
    assert twin.set_params(threshold=0.95).threshold == 0.95 and est.threshold == 0.9
    X = np.random.default_rng(0).normal(size=(400, 4)) @ np.random.default_rng(1).normal(size=(4, 12))
    fitted = clone(est).fit(X)
    assert isinstance(fitted.eigenvalues_, np.ndarray) and isinstance(fitted.bootstrap_k_, np.ndarray)
    assert fitted.n_features_in_ == 12 and fitted.k_ <= 4
    # numpy and torch input give the same fit
    assert EffectiveRank(n_bootstrap=0).fit(torch.as_tensor(X)).k_ == EffectiveRank(n_bootstrap=0).fit(X).k_
    pipe = Pipeline([("scale", StandardScaler()), ("rank", EffectiveRank(n_bootstrap=0))]).fit(X)
    assert pipe.named_steps["rank"].k_ <= 4
    assert "rank__threshold" in pipe.get_params()


# EffectiveRank has fit only (no predict/transform/score): the checks that apply are the fit-side contract
# (parameters, cloning, input validation, idempotence, pickling). Checks left out, with the reason:
EXPECTED_FAILED_CHECKS = {
    # a dict in an object array is bad input: interp raises InterpError (a ValueError naming the fix) for every
    # non-numeric X, where scikit-learn expects the TypeError that float(dict) raises
    "check_dtype_object": "non-numeric X raises InterpError (ValueError), not TypeError",
}


def _rank_estimators():
    from sklearn.utils.estimator_checks import parametrize_with_checks

    return parametrize_with_checks([EffectiveRank(n_bootstrap=5)],
                                   expected_failed_checks=lambda est: EXPECTED_FAILED_CHECKS)


@_rank_estimators()
def test_sklearn_check_estimator(estimator, check):
    check(estimator)


# ------------------------------------------------------------------ experiment and command

_TEXTS = [f"Passage {i}: the river ran past the mill while {i % 5} boats drifted by the sunny hills." for i in range(24)]


def test_rank_experiment_on_tiny_model(tmp_path, tiny_llama, monkeypatch):
    import json

    from interp.experiments import rank

    monkeypatch.setattr(rank, "passages_for", lambda tok, n, max_tokens: _TEXTS[:n])
    cfg = rank.Config(layers=[0, 1], passages=24, max_tokens=32, bootstrap=3, bootstrap_blocks=5, progress=False)
    result = rank.run(tiny_llama, cfg, out=tmp_path)
    r = json.loads((tmp_path / "report.json").read_text())
    for key in ("threshold", "positions", "n_passages", "max_tokens", "n_tokens", "layers", "relative_k99", "k99",
                "ci", "seconds", "summary", "reproduction"):
        assert key in r
    assert r["layers"] == [0, 1] and set(r["relative_k99"]) == {"attn_out", "mlp_out", "resid_post"}
    # the same numbers as the estimator run by hand on the store the experiment kept
    from interp.analyzers.rank import fit_store_sites
    from interp.store import ActivationStore

    fits = fit_store_sites(ActivationStore(tmp_path / "store_test"), n_bootstrap=3, n_blocks=5)
    assert r["k99"]["mlp_out"] == [fits["mlp_out.0"].k_, fits["mlp_out.1"].k_]
    assert r["ci"]["mlp_out"][0] == list(fits["mlp_out.0"].ci_)
    # the protocol: split by passage, test read for the numbers, no passage on two sides
    p = r["protocol"]
    assert p["split_unit"] == "passage" and p["selected_on"] == "validation" and p["seed"] == 0
    assert p["n_train"] + p["n_val"] + p["n_test"] == 24 and r["n_test_passages"] == p["n_test"]
    test_store, val_store = ActivationStore(tmp_path / "store_test"), ActivationStore(tmp_path / "store_val")
    assert not set(test_store.manifest["prompt_hashes"]) & set(val_store.manifest["prompt_hashes"])
    assert test_store.n_examples == p["n_test"] and r["validation"]["n_passages"] == p["n_val"]
    assert {"k99_per_layer", "spectra"} <= set(result.figures)
    names = [h["name"] for h in r["summary"]]
    assert any(n.startswith("attn_out") for n in names) and any("mlp_out − attn_out" in n for n in names)
    assert all(h["split"].startswith("test (") for h in r["summary"])
    # without out nothing is written and the temporary store is gone
    assert rank.run(tiny_llama, cfg).report["k99"] == r["k99"]
    # another seed is another split; a seed sweep reports mean ± spread of each headline
    from dataclasses import replace

    swept = rank.run(tiny_llama, replace(cfg, seeds=[0, 1]), out=tmp_path / "sweep")
    s = json.loads((tmp_path / "sweep" / "report.json").read_text())
    gap = "mlp_out − attn_out k99/d, mean over layers"
    per_seed = s["seeds"]["headlines"][gap]["per_seed"]
    assert set(per_seed) == {"0", "1"} and s["protocol"]["seeds"] == [0, 1]
    assert per_seed["0"] == next(h["value"] for h in r["summary"] if h["name"] == gap)
    mean = sum(per_seed.values()) / 2
    assert abs(next(h.value for h in swept.headlines if h.name == gap) - mean) < 1e-12
    assert (tmp_path / "sweep" / "seed_1" / "report.json").exists()


def test_rank_command_validates_before_loading(tmp_path, monkeypatch):
    import interp.loading
    from interp.cli import main
    from interp.commands.rank import parse_layer_list

    def boom(*a, **k):
        raise AssertionError("loaded a model or the corpus before validating")

    monkeypatch.setattr(interp.loading, "load_model", boom)
    monkeypatch.setattr("interp.data.corpus.text_corpus", boom)
    assert main(["rank", "smollm2-135m-instruct", "--layers", "2", "99", "--out", str(tmp_path)]) == 2
    assert main(["rank", "smollm2-135m-instruct", "--layers", "two", "--out", str(tmp_path)]) == 2
    assert main(["rank", "smollm2-135m-instruct", "--sites", "attn_out", "mlp_outt", "--out", str(tmp_path)]) == 2
    assert main(["rank", "smollm2-135m-instruct", "--positions", "1::x", "--out", str(tmp_path)]) == 2
    assert not (tmp_path / "report.json").exists()
    # lists are space-separated; the older comma form still parses the same
    assert parse_layer_list(["2", "5"], 30) == parse_layer_list(["2,5"], 30) == [2, 5]
    assert parse_layer_list(["all"], 30) is None
