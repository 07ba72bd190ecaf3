"""Numeric subspaces: the PLS estimator (and its scikit-learn contract), entity-held-out CV, entity tables,
positions, the flip test through interventions, the experiment's report, the command."""
import json

import numpy as np
import pytest
import torch

from interp import InterpError
from interp.analyzers.numeric import NumericSubspace, cross_validate_layers, entity_folds
from interp.data.entities import ATTRIBUTES, comparison_pairs, get_attribute, load_entities
from interp.experiments import numeric
from interp.experiments.numeric import entity_positions, flip_test, parse_number, push, recall_filter
from interp.numeric_experiment import run_numeric


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


def test_flip_test_zero_push_flips_nothing_and_fast_path_matches_full_forward(tiny_llama):
    from interp.interventions import Add

    att = get_attribute("birth_year")
    names, values = load_entities(att, 20)
    pairs = comparison_pairs(att, names, values, 6)
    u = np.random.default_rng(0).normal(size=tiny_llama.d_model)
    u /= np.linalg.norm(u)
    res = flip_test(tiny_llama, att, pairs, {0: u}, [0.0], {0: 1.0}, n_random=2, progress=False)
    assert res["flip_rate_pls"] == [[0.0]] and res["flip_rate_random"] == [[0.0]]
    assert res["n_pairs"] == 6 and 0 <= res["baseline_accuracy"] <= 1
    # the cached-residual shortcut the flip test uses (Add at resid_pre.1 while only blocks 1.. run on the
    # cached resid_post.0) equals the same Add at resid_post.0 in a full forward
    from interp.capture import recording

    prompts = [att.compare.format(a=a, b=b) for a, b, _ in pairs[:2]]
    batch = tiny_llama.pad(tiny_llama.encode(prompts).ids)
    vec = torch.as_tensor(u, dtype=torch.float32)
    with recording(tiny_llama, "resid_post.0") as rec:
        tiny_llama.last_logits(batch)
    with tiny_llama.intervene({"resid_pre.1": Add(vec, 5.0, positions=[-3])}):
        fast = tiny_llama.last_logits(batch, start_layer=1, resid=rec["resid_post.0"])
    with tiny_llama.intervene({"resid_post.0": Add(vec, 5.0, positions=[-3])}):
        slow = tiny_llama.last_logits(batch)
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-4)
    with pytest.raises(InterpError, match="flip layers"):
        flip_test(tiny_llama, att, pairs, {1: u}, [1.0], {1: 1.0}, progress=False)


def test_flip_edit_equals_the_hand_written_edit(tiny_llama):
    """The flip test's edit (``push``: ``Add`` with per-prompt positions and signs, attached at resid_pre.L+1
    while blocks L+1.. run on the cached resid_post.L) gives exactly the logits of the edit it replaced:
    the cached tensor changed in place at each prompt's padded column."""
    from interp.capture import recording

    att = get_attribute("birth_year")
    names, values = load_entities(att, 30)
    pairs = comparison_pairs(att, names, values, 6, seed=1)
    prompts = [att.compare.format(a=a, b=b) for a, b, _ in pairs]
    pos = entity_positions(tiny_llama, prompts, [b for _, b, _ in pairs])
    enc = tiny_llama.encode(prompts)
    batch = tiny_llama.pad(enc.ids)
    width = batch["input_ids"].shape[1]
    cols = torch.tensor([width - len(ids) + p[0] for ids, p in zip(enc.ids, pos)])
    up = [True, False, False, True, True, False]
    sign = torch.where(torch.tensor(up), 1.0, -1.0)
    v = torch.randn(tiny_llama.d_model, generator=torch.Generator().manual_seed(0))
    v = v / v.norm()
    with recording(tiny_llama, "resid_post.0") as rec:
        tiny_llama.last_logits(batch)
    h = rec["resid_post.0"]
    for size in (0.5, 7.25, 300.0):
        edited = h.clone()
        edited[torch.arange(len(prompts)), cols] += (size * sign[:, None] * v[None]).to(edited.dtype)
        by_hand = tiny_llama.last_logits(batch, start_layer=1, resid=edited)
        with tiny_llama.intervene({"resid_pre.1": push(v, size, pos, up)}):
            via_add = tiny_llama.last_logits(batch, start_layer=1, resid=h)
        assert torch.equal(by_hand, via_add)
        assert not torch.equal(by_hand, tiny_llama.last_logits(batch))  # the edit did something
    # the flip test reads the answers with interp.evaluation.logit_diff and counts sign changes
    res = flip_test(tiny_llama, att, pairs, {0: v.numpy()}, [0.5, 300.0], {0: 1.0}, n_random=1, batch_size=4,
                    progress=False)
    assert np.asarray(res["flip_rate_pls"]).shape == (1, 2) and len(res["flip_rate_random_per_seed"][0][0]) == 1


def test_push_adds_with_a_sign_per_prompt():
    x = torch.zeros(3, 4, 2)
    v = torch.tensor([0.0, 1.0])
    from interp.interventions import Context

    y = push(v, 2.0, [[1], [3], [0]], [True, False, True]).apply(x, Context.whole(x))
    assert y[:, :, 1].tolist() == [[0, 2, 0, 0], [0, 0, 0, -2], [2, 0, 0, 0]]
    only_down = push(v, 1.0, [[0], [1]], [False, False]).apply(x[:2], Context.whole(x[:2]))
    assert only_down[:, :, 1].tolist() == [[-1, 0, 0, 0], [0, -1, 0, 0]]


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


# ----------------------------------------------------------------- scikit-learn contract of NumericSubspace

def test_subspace_is_a_sklearn_regressor_and_transformer():
    from sklearn.base import clone, is_regressor
    from sklearn.model_selection import GridSearchCV, GroupKFold, cross_val_score
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    X, y, _ = planted(n=200, d=12, seed=4, noise=0.5)
    est = NumericSubspace(n_components=3, scale=False)
    twin = clone(est)
    assert twin is not est and twin.get_params() == {"n_components": 3, "scale": False} and is_regressor(twin)
    assert twin.set_params(n_components=2).n_components == 2 and est.n_components == 3
    fitted = clone(est).fit(torch.as_tensor(X), torch.as_tensor(y))  # torch in, numpy out
    for out in (fitted.predict(X), fitted.transform(X), fitted.fit_transform(X, y), fitted.direction_):
        assert isinstance(out, np.ndarray)
    assert np.allclose(fitted.predict(torch.as_tensor(X)), NumericSubspace(3, scale=False).fit(X, y).predict(X))
    groups = np.arange(200) // 2  # two rows per "entity"
    scores = cross_val_score(NumericSubspace(2), X, y, groups=groups, cv=GroupKFold(4))
    assert scores.shape == (4,) and (scores > 0.5).all()
    pipe = Pipeline([("scale", StandardScaler()), ("pls", NumericSubspace())])
    search = GridSearchCV(pipe, {"pls__n_components": [1, 3]}, cv=3).fit(X, y)
    assert search.best_params_["pls__n_components"] in (1, 3) and search.score(X, y) > 0.5
    with pytest.raises(InterpError, match="not fitted"):  # also sklearn's NotFittedError
        NumericSubspace().transform(X)
    from sklearn.exceptions import NotFittedError
    with pytest.raises(NotFittedError):
        NumericSubspace().predict(X)


# Checks left out of scikit-learn's suite, with the reason:
EXPECTED_FAILED_CHECKS = {
    # a dict in an object array is bad input: interp raises InterpError (a ValueError naming the fix) for every
    # non-numeric X, where scikit-learn expects the TypeError that float(dict) raises
    "check_dtype_object": "non-numeric X raises InterpError (ValueError), not TypeError",
}


def _numeric_estimators():
    from sklearn.utils.estimator_checks import parametrize_with_checks

    # n_components=1: the suite fits tiny data (down to 1 feature), and 5 components need 6 samples and 5 features
    return parametrize_with_checks([NumericSubspace(n_components=1)],
                                   expected_failed_checks=lambda est: EXPECTED_FAILED_CHECKS)


@_numeric_estimators()
def test_sklearn_check_estimator(estimator, check):
    check(estimator)


# ----------------------------------------------------------------- experiment and command

def test_experiment_returns_a_result_with_headlines(tiny_llama, tmp_path):
    cfg = numeric.Config(attribute="atomic_number", max_entities=25, filter_known=False, n_pairs=6, n_random=2,
                         alphas=[0.5, 4.0], layers=[0, 1], flip_layers=[0], progress=False)
    result = numeric.run(tiny_llama, cfg, out=tmp_path)
    assert result.experiment == "numeric" and result["best_layer"] in (0, 1)
    names = [h.name for h in result.headlines]
    assert any("PLS R²" in n for n in names) and any("flip rate, PLS" in n for n in names)
    assert all(h.split for h in result.headlines)
    assert "entity-held-out" in result.headlines[0].split and "25 entities" in result.headlines[0].split
    assert set(result.figures) == {"r2_per_layer", "flips", "pls_plane"}
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["summary"][0]["split"] == result.headlines[0].split and saved["pls_r2"] == result["pls_r2"]
    assert json.loads((tmp_path / "probe.json").read_text())["pls_r2"] == saved["pls_r2"]


@pytest.mark.parametrize("bad, match", [
    ({"layers": [0, 2]}, "layers must be in 0..1"),
    ({"flip_layers": [1]}, "flip layers"),
    ({"layers": [1], "flip_layers": [0]}, "not probed"),
    ({"alphas": [1.0, float("nan")]}, "finite"),
    ({"alphas": []}, "finite"),
    ({"attribute": "shoe_size"}, "birth_year"),
    ({"n_splits": 1}, "at least 2"),
    ({"tolerance": -1.0}, ">= 0"),
])
def test_config_is_checked_before_anything_runs(bad, match):
    with pytest.raises(InterpError, match=match):
        numeric.check_config(numeric.Config(**bad), n_layers=2)


def test_command_validates_before_loading_the_model(monkeypatch):
    import interp.loading
    from interp.cli import build_parser
    from interp.commands.numeric import config_from_args

    def no_load(*a, **k):
        raise AssertionError("the model must not load for bad arguments")
    monkeypatch.setattr(interp.loading, "load_model", no_load)
    parse = build_parser().parse_args
    args = parse(["numeric", "smollm2-135m-instruct", "--attribute", "birth_year", "--out", "o", "--layers", "3", "5",
                  "--flip-layers", "3", "--alphas", "1", "4", "16"])
    cfg = config_from_args(args, 30)
    assert cfg.layers == [3, 5] and cfg.flip_layers == [3] and cfg.alphas == [1.0, 4.0, 16.0]
    old = parse(["numeric", "m", "--attribute", "birth_year", "--out", "o", "--flip-layers", "4,10", "--alphas", "1,4"])
    assert config_from_args(old, 30).flip_layers == [4, 10] and config_from_args(old, 30).alphas == [1.0, 4.0]
    for argv, match in ((["--layers", "40"], "layers must be in 0..29"), (["--flip-layers", "29"], "flip layers"),
                        (["--alphas", "x"], "--alphas takes numbers")):
        args = parse(["numeric", "smollm2-135m-instruct", "--attribute", "birth_year", "--out", "o", *argv])
        with pytest.raises(InterpError, match=match):
            args.func(args)


def test_probe_script_calls_the_experiment(tiny_llama, tmp_path, monkeypatch, capsys):
    import importlib.util
    from pathlib import Path

    import interp.loading

    monkeypatch.setattr(interp.loading, "load_model", lambda name: tiny_llama)
    path = Path(__file__).parents[1] / "probes" / "numeric_subspace.py"
    spec = importlib.util.spec_from_file_location("numeric_probe", path)
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    rc = probe.main(["tiny", "--attributes", "atomic_number", "--out", str(tmp_path), "--no-filter",
                     "--max-entities", "20", "--flip-layers", "0", "--alphas", "0.5", "--pairs", "4", "--seeds", "1"])
    assert rc == 0 and (tmp_path / "atomic_number" / "report.json").exists()
    assert "atomic_number" in capsys.readouterr().out
    assert probe.main(["tiny", "--attributes", "shoe_size", "--out", str(tmp_path)]) == 2
