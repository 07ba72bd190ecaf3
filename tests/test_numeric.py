"""Numeric subspaces: the PLS estimator, entity-held-out CV, entity tables, positions, flip test, report."""
import json

import numpy as np
import pytest
import torch

from interp import InterpError
from interp.analyzers.numeric import NumericSubspace, cross_validate_layers, entity_folds
from interp.numeric_experiment import (ATTRIBUTES, comparison_pairs, entity_positions, flip_test, get_attribute,
                                       load_entities, parse_number, recall_filter, run_numeric)


def planted(n=400, d=24, seed=0, noise=1.0):
    rng = np.random.default_rng(seed)
    v = rng.normal(size=d)
    v /= np.linalg.norm(v)
    t = rng.normal(size=n)
    # the value lives along v; per-feature spread is mostly noise, as in real activations
    X = t[:, None] * v[None] * 2 + noise * rng.normal(size=(n, d))
    return X, t, v


def test_subspace_finds_planted_direction():
    X, y, v = planted()
    est = NumericSubspace(n_components=3).fit(X[:300], y[:300])
    assert est.score(X[300:], y[300:]) > 0.7
    assert est.components_.shape == (3, 24) and np.allclose(np.linalg.norm(est.components_, axis=1), 1)
    assert est.direction_ @ v > 0.9  # found and signed so the value grows along it
    step = est.predict(X[300:] + est.direction_) - est.predict(X[300:])
    assert (step > 0).all()
    assert est.transform(X[:5]).shape == (5, 3)


def test_direction_is_first_weight_divided_by_scale():
    X, y, _ = planted()
    X = X * np.linspace(0.1, 10, X.shape[1])  # features on very different scales
    est = NumericSubspace(n_components=2).fit(X, y)
    w = est.pls_.x_weights_[:, 0] / X.std(0)
    w /= np.linalg.norm(w)
    assert abs(est.direction_ @ w) == pytest.approx(1.0, abs=1e-9)
    raw = NumericSubspace(n_components=2, scale=False).fit(X, y)
    assert np.allclose(raw.scaler_scale_, 1.0)


def test_subspace_bad_input():
    X, y, _ = planted(n=40)
    with pytest.raises(InterpError, match="constant"):
        NumericSubspace().fit(X, np.ones(40))
    bad = X.copy()
    bad[3, 2] = np.nan
    with pytest.raises(InterpError, match="NaN"):
        NumericSubspace().fit(bad, y)
    y_nan = y.copy()
    y_nan[5] = np.nan
    with pytest.raises(InterpError, match="rows \\[5\\]"):
        NumericSubspace().fit(X, y_nan)
    with pytest.raises(InterpError, match="40 rows but y has 39"):
        NumericSubspace().fit(X, y[:39])
    with pytest.raises(InterpError, match="too many"):
        NumericSubspace(n_components=30).fit(X, y)
    with pytest.raises(InterpError, match="not fitted"):
        NumericSubspace().predict(X)
    with pytest.raises(InterpError, match="2-D"):
        NumericSubspace().fit(X[None], y)


def test_cross_validation_by_entity_with_baselines():
    X, t, _ = planted(n=60, seed=1, noise=0.3)
    rng = np.random.default_rng(2)
    names = [f"e{i}" for i in range(60)]
    # two mentions per entity; layer 0 is noise, layer 1 carries the value
    rows = np.repeat(np.arange(60), 2)
    signal = X[rows] + 0.1 * rng.normal(size=(120, X.shape[1]))
    noise = rng.normal(size=signal.shape)
    groups = [names[i] for i in rows]
    cv = cross_validate_layers(np.stack([noise, signal]), t[rows], groups, n_components=3, progress=False)
    assert set(cv) == {"pls", "ridge", "pca_linear", "shuffled"}
    assert cv["pls"][1] > 0.9 and cv["ridge"][1] > 0.9
    assert cv["pls"][0] < 0.2 and cv["shuffled"][1] < 0.3
    for tr, te in entity_folds(groups, 5):
        assert not set(np.asarray(groups)[tr]) & set(np.asarray(groups)[te])
    with pytest.raises(InterpError, match="only 3 distinct entities for 5 folds"):
        entity_folds(["a", "b", "c", "a"], 5)
    with pytest.raises(InterpError, match="group labels"):
        cross_validate_layers(np.stack([signal]), t[rows], groups[:10], progress=False)


def test_parse_number():
    assert parse_number("1879") == 1879
    assert parse_number("It was 1,234,567.") == 1234567
    assert parse_number("about 3.5 billion") == 3.5e9
    assert parse_number("-33.87") == -33.87
    assert parse_number("74.0° W") == -74.0
    assert parse_number("40.7 N") == 40.7
    assert parse_number("Nobody knows") is None


def test_tables_and_attributes():
    with pytest.raises(InterpError, match="birth_year"):
        get_attribute("shoe_size")
    for name in ATTRIBUTES:
        names, values = load_entities(name)
        assert len(names) == len(values) >= 100 and len(set(names)) == len(names)
        assert np.isfinite(values).all() and np.ptp(values) > 0
    names, births = load_entities("birth_year")
    _, deaths = load_entities("death_year")
    assert len(names) >= 150 and (deaths > births).all() and (deaths - births < 110).all()
    assert births[names.index("Albert Einstein")] == 1879
    _, pop = load_entities("population")
    assert 5.5 < pop.min() and pop.max() < 8  # log10 of city populations
    _, z = load_entities("atomic_number")
    assert list(z[:3]) == [1, 2, 3]
    assert len(load_entities("latitude", max_entities=10)[0]) == 10


def test_entity_positions(tiny_llama):
    prompts = ["Was Marie Curie born before Alan Turing? Answer Yes or No.", "Tell me about Voltaire."]
    pos = entity_positions(tiny_llama, prompts, ["Alan Turing", "Voltaire"])
    enc = tiny_llama.encode(prompts)
    for (p,), ids, ent in zip(pos, enc.ids, ["Alan Turing", "Voltaire"]):
        assert tiny_llama.tokenizer.decode(ids[: p + 1]).endswith(ent)
        assert not tiny_llama.tokenizer.decode(ids[: p]).endswith(ent)
    with pytest.raises(InterpError, match="tokenizes to nothing"):
        entity_positions(tiny_llama, ["Hello there"], ["  "])
    with pytest.raises(InterpError, match="does not occur"):
        entity_positions(tiny_llama, ["Hello there"], ["Voltaire"])


def test_comparison_pairs_are_balanced_and_true():
    att = get_attribute("birth_year")
    names, values = load_entities(att)
    value = dict(zip(names, values))
    pairs = comparison_pairs(att, names, values, 40, seed=3)
    assert len(pairs) == 40 and sum(t for _, _, t in pairs) == 20
    assert all((value[a] < value[b]) == yes for a, b, yes in pairs)
    north = get_attribute("latitude")
    cn, cv = load_entities(north)
    lat = dict(zip(cn, cv))
    assert all((lat[a] > lat[b]) == yes for a, b, yes in comparison_pairs(north, cn, cv, 10))


def test_recall_filter_keeps_entities_within_tolerance(tiny_llama, monkeypatch):
    import interp.generation

    replies = {"Albert Einstein": "1879.", "Charles Darwin": "He was born in 1850", "Galileo Galilei": "I don't know"}
    monkeypatch.setattr(interp.generation, "generate",
                        lambda model, prompts, **kw: [next(v for k, v in replies.items() if k in p) for p in prompts])
    rec = recall_filter(tiny_llama, "birth_year", list(replies), np.array([1879.0, 1809.0, 1564.0]), progress=False)
    assert rec.known.tolist() == [True, False, False]
    assert rec.summary() == {"n_entities": 3, "n_known": 1, "n_unparsed": 1, "tolerance": 10.0}
    assert recall_filter(tiny_llama, "birth_year", list(replies), np.array([1879.0, 1809.0, 1564.0]),
                         tolerance=50, progress=False).known.tolist() == [True, True, False]


def test_flip_test_zero_push_flips_nothing_and_fast_path_matches_hooks(tiny_llama):
    att = get_attribute("birth_year")
    names, values = load_entities(att, 20)
    pairs = comparison_pairs(att, names, values, 6)
    u = np.random.default_rng(0).normal(size=tiny_llama.d_model)
    u /= np.linalg.norm(u)
    res = flip_test(tiny_llama, att, pairs, {0: u}, [0.0], {0: 1.0}, n_random=2, progress=False)
    assert res["flip_rate_pls"] == [[0.0]] and res["flip_rate_random"] == [[0.0]]
    assert res["n_pairs"] == 6 and 0 <= res["baseline_accuracy"] <= 1
    # the cached-residual shortcut the flip test uses equals a plain hooked forward
    prompts = [att.compare.format(a=a, b=b) for a, b, _ in pairs[:2]]
    enc = tiny_llama.encode(prompts)
    batch = tiny_llama.pad(enc.ids)
    vec = torch.as_tensor(u, dtype=torch.float32) * 5
    cache = {}

    def read(x):
        cache["h"] = x.detach().clone()
    with tiny_llama.hooks({"resid_post.0": read}):
        tiny_llama.last_logits(batch)
    edited = cache["h"].clone()
    edited[:, -3] += vec
    fast = tiny_llama.last_logits(batch, start_layer=1, resid=edited)

    def add(x):
        x = x.clone()
        x[:, -3] += vec
        return x
    with tiny_llama.hooks({"resid_post.0": add}):
        slow = tiny_llama.last_logits(batch)
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-4)
    with pytest.raises(InterpError, match="flip layers"):
        flip_test(tiny_llama, att, pairs, {1: u}, [1.0], {1: 1.0}, progress=False)


def test_run_numeric_writes_report(tiny_llama, tmp_path):
    rep = run_numeric(tiny_llama, "atomic_number", tmp_path, max_entities=25, filter_known=False, n_pairs=6,
                      n_random=2, alphas=(0.5, 4.0), progress=False)
    saved = json.loads((tmp_path / "report.json").read_text())
    assert json.loads((tmp_path / "probe.json").read_text())["pls_r2"] == saved["pls_r2"]
    for key in ("pls_r2", "baselines", "flip_rate_pls", "flip_rate_random", "flip", "best_layer", "projection"):
        assert key in saved
    assert len(saved["pls_r2"]) == tiny_llama.n_layers == len(saved["baselines"]["ridge"])
    assert np.asarray(saved["flip"]["flip_rate_pls"]).shape == (1, 2)
    assert rep["n_entities"] == 25 and len(saved["projection"]["xy"]) == 25
    assert "plotly" in (tmp_path / "report.html").read_text()[:5_000_000]
    with pytest.raises(InterpError, match="fewer than 5 folds"):
        run_numeric(tiny_llama, "atomic_number", None, max_entities=4, filter_known=False, progress=False)


def test_cli_registers_numeric():
    from interp.cli import build_parser

    args = build_parser().parse_args(["numeric", "m", "--attribute", "latitude", "--out", "o", "--no-filter"])
    assert args.attribute == "latitude" and args.no_filter and args.components == 5
    with pytest.raises(SystemExit):
        build_parser().parse_args(["numeric", "m", "--attribute", "shoe_size", "--out", "o"])
