"""Numeric subspaces: the PLS estimator (and its scikit-learn contract), entity-held-out scores, entity tables,
positions, the α-sweep flip test through interventions, the validation/test protocol, the experiment's report,
the command, and (slow) the paper's probing claim on the packaged Qwen model."""
import json

import numpy as np
import pytest
import torch

from interp import InterpError
from interp.analyzers.numeric import NumericSubspace, cross_validate_layers, entity_folds, heldout_scores
from interp.data.entities import ATTRIBUTES, comparison_pairs, get_attribute, load_entities
from interp.experiments import numeric
from interp.experiments.numeric import choose_flip, entity_positions, flip_test, parse_number, recall_filter


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


def test_direction_is_the_papers_pattern_and_the_filter_differs():
    """The steering direction is x_weights·scale (the paper's code maps it back that way), the read-out filter
    x_weights/scale; with features on very different scales the two differ and only the filter reads the value."""
    X, y, _ = planted()
    X = X * np.linspace(0.1, 10, X.shape[1])  # features on very different scales
    est = NumericSubspace(n_components=2).fit(X, y)
    pattern = est.pls_.x_weights_[:, 0] * X.std(0)
    pattern /= np.linalg.norm(pattern)
    filt = est.pls_.x_weights_[:, 0] / X.std(0)
    filt /= np.linalg.norm(filt)
    assert abs(est.direction_ @ pattern) == pytest.approx(1.0, abs=1e-9)
    assert abs(est.filter_direction_ @ filt) == pytest.approx(1.0, abs=1e-9)
    assert abs(est.direction_ @ est.filter_direction_) < 0.9  # not the same vector under unequal scales
    # both signed so the prediction grows along them
    for v in (est.direction_, est.filter_direction_):
        assert (est.predict(X[:20] + v) > est.predict(X[:20])).all()
    raw = NumericSubspace(n_components=2, scale=False).fit(X, y)
    assert np.allclose(raw.scaler_scale_, 1.0) and np.allclose(raw.direction_, raw.filter_direction_)


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


def test_heldout_scores_fit_on_train_and_score_held_out_rows():
    X, t, _ = planted(n=60, seed=1, noise=0.3)
    rng = np.random.default_rng(2)
    rows = np.repeat(np.arange(60), 2)
    signal = X[rows] + 0.1 * rng.normal(size=(120, X.shape[1]))
    noise = rng.normal(size=signal.shape)
    from interp.protocol import split_groups

    s = split_groups(rows.tolist(), seed=0, unit="entity")
    out = heldout_scores(np.stack([noise, signal]), t[rows], s.train, s.test, n_components=3, progress=False)
    # measured (deterministic): signal layer 0.881 on the 12 test entities; noise layer and shuffled below 0
    assert out["pls"][1] > 0.8 and out["pls"][0] < 0.2 and out["shuffled"][1] < 0.3
    with pytest.raises(InterpError, match="overlap"):
        heldout_scores(np.stack([signal]), t[rows], s.train, s.train[:4], progress=False)


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


def test_comparison_pairs_use_each_pair_at_most_once_per_order():
    att = get_attribute("birth_year")
    names, values = ["A", "B", "C"], np.array([1900.0, 1800.0, 1850.0])
    pairs = comparison_pairs(att, names, values, 10, seed=0)
    assert len(pairs) == 6 and len(set(pairs)) == 6  # 3 unordered pairs, each in both orders, no more
    assert sum(t for *_, t in pairs) == 3
    assert all((dict(zip(names, values))[a] < dict(zip(names, values))[b]) == yes for a, b, yes in pairs)


def test_sweep_stacked_in_one_batch_equals_one_edit_at_a_time(tiny_llama, monkeypatch):
    """Every (direction, α) edit stacked into the batch dimension (chunks of max_rows rows, AddPerPrompt at
    resid_pre.1 on the cached residual, the columns before the first edited token from a KV cache) gives the
    Yes−No logit difference of one full forward per edit (Add at resid_post.0 at each prompt's second entity)."""
    from interp.prefix import LeadingColumns

    cuts = []
    of = LeadingColumns.of
    monkeypatch.setattr(LeadingColumns, "of", classmethod(lambda cls, m, b, cut: cuts.append(cut) or of(m, b, cut)))
    from interp.capture import recording
    from interp.evaluation import logit_diff
    from interp.experiments.numeric import answer_tokens, sweep
    from interp.interventions import Add

    att = get_attribute("birth_year")
    names, values = load_entities(att, 30)
    pairs = comparison_pairs(att, names, values, 5, seed=1)
    prompts = [att.compare.format(a=a, b=b) for a, b, _ in pairs]
    pos = entity_positions(tiny_llama, prompts, [b for _, b, _ in pairs])
    enc = tiny_llama.encode(prompts)
    batch = tiny_llama.pad(enc.ids)
    y, n, _ = answer_tokens(tiny_llama, batch)
    ans = torch.tensor([[y, n]])
    vecs = torch.randn(3, tiny_llama.d_model, generator=torch.Generator().manual_seed(0))
    vecs = vecs / vecs.norm(dim=1, keepdim=True)
    alphas = [-40.0, -2.0, 2.0, 40.0]
    at = torch.zeros(len(prompts), max(map(len, enc.ids)), dtype=torch.bool)
    at[torch.arange(len(prompts)), torch.tensor([p[0] for p in pos])] = True
    with recording(tiny_llama, "resid_post.0") as rec:
        base = logit_diff(tiny_llama.last_logits(batch).float(), ans.expand(len(prompts), 2))
    diff, tok = sweep(tiny_llama, batch, rec["resid_post.0"], 0, at, vecs, alphas, ans, max_rows=7)  # uneven chunks
    assert diff.shape == tok.shape == (3, 4, 5)
    for vi in range(3):
        for ai, a in enumerate(alphas):
            with tiny_llama.intervene({"resid_post.0": Add(vecs[vi], a, positions=pos)}):
                logits = tiny_llama.last_logits(batch).float()
            np.testing.assert_allclose(diff[vi, ai], logit_diff(logits, ans.expand(len(prompts), 2)).numpy(),
                                       rtol=1e-4, atol=1e-5)
            assert (tok[vi, ai] == logits.argmax(-1).numpy()).all()
    assert np.abs(diff[:, [0, 3]] - base.numpy()).max() > 1e-4  # the edits did something
    assert cuts and cuts[0] > 0  # the forwards skipped the columns before the edits


def test_flip_test_counts_a_flip_at_any_alpha(tiny_llama, monkeypatch):
    """flip_rate[..][α] is the share of prompts whose Yes/No sign changed at that α; flip_rate_any the share
    that changed at any α; "random" averages the random directions (here: sweep outputs planted by hand)."""
    att = get_attribute("birth_year")
    names, values = load_entities(att, 30)
    pairs = comparison_pairs(att, names, values, 4, seed=1)
    planted = {}

    def fake_sweep(model, batch, resid, layer, at, vectors, alphas, answers, max_rows=256):
        diff = np.random.default_rng(len(planted)).normal(size=(len(vectors), len(alphas), resid.shape[0]))
        planted[len(planted)] = diff
        return diff, np.zeros(diff.shape, dtype=np.int64)

    monkeypatch.setattr(numeric, "sweep", fake_sweep)
    u = np.ones(tiny_llama.d_model)
    res = flip_test(tiny_llama, att, pairs, {0: {"pattern": u, "filter": -u}}, [-1.0, 1.0, 2.0], n_random=2,
                    batch_size=4, progress=False)
    diff = planted[0]
    from interp.evaluation import logit_diff
    from interp.experiments.numeric import answer_tokens

    prompts = [att.compare.format(a=a, b=b) for a, b, _ in pairs]
    batch = tiny_llama.pad(tiny_llama.encode(prompts).ids)
    y, n, _ = answer_tokens(tiny_llama, batch)
    said = (logit_diff(tiny_llama.last_logits(batch).float(), torch.tensor([[y, n]]).expand(4, 2)) > 0).numpy()
    flips = (diff > 0) != said  # [vectors, alphas, prompts]
    assert res["flip_rate"]["pattern"][0] == pytest.approx(flips[0].mean(-1).tolist())
    assert res["flip_rate_any"]["filter"][0] == pytest.approx(flips[1].any(0).mean())
    assert res["flip_rate_any"]["random"][0] == pytest.approx(flips[2:].any(1).mean(-1).mean())
    assert res["flip_rate_random_per_direction"][0] == pytest.approx(flips[2:].any(1).mean(-1).tolist())
    assert res["flip_rate_any"]["pattern"][0] >= max(res["flip_rate"]["pattern"][0])
    assert res["flip_rate_pls"] == res["flip_rate"]["pattern"] and res["n_pairs"] == 4
    with pytest.raises(InterpError, match="flip layers"):
        flip_test(tiny_llama, att, pairs, {1: u}, [1.0], progress=False)


def test_zero_alpha_flips_nothing(tiny_llama):
    att = get_attribute("birth_year")
    names, values = load_entities(att, 20)
    pairs = comparison_pairs(att, names, values, 6)
    u = np.random.default_rng(0).normal(size=tiny_llama.d_model)
    res = flip_test(tiny_llama, att, pairs, {0: u}, [0.0], n_random=2, progress=False)
    assert res["flip_rate_any"] == {"pattern": [0.0], "random": [0.0]}
    assert res["flip_rate_any_token"] == {"pattern": [0.0], "random": [0.0]}


def test_add_per_prompt_equals_the_hand_written_edit(tiny_llama):
    """AddPerPrompt at resid_pre.1 on the cached resid_post.0 gives exactly the logits of the cached tensor
    changed in place at each prompt's padded column by that prompt's own vector."""
    from interp.capture import recording
    from interp.interventions import AddPerPrompt

    att = get_attribute("birth_year")
    names, values = load_entities(att, 30)
    pairs = comparison_pairs(att, names, values, 6, seed=1)
    prompts = [att.compare.format(a=a, b=b) for a, b, _ in pairs]
    pos = entity_positions(tiny_llama, prompts, [b for _, b, _ in pairs])
    enc = tiny_llama.encode(prompts)
    batch = tiny_llama.pad(enc.ids)
    width = batch["input_ids"].shape[1]
    cols = torch.tensor([width - len(ids) + p[0] for ids, p in zip(enc.ids, pos)])
    vecs = torch.randn(len(prompts), tiny_llama.d_model, generator=torch.Generator().manual_seed(0)) * 7
    with recording(tiny_llama, "resid_post.0") as rec:
        tiny_llama.last_logits(batch)
    h = rec["resid_post.0"]
    edited = h.clone()
    edited[torch.arange(len(prompts)), cols] += vecs.to(edited.dtype)
    by_hand = tiny_llama.last_logits(batch, start_layer=1, resid=edited)
    with tiny_llama.intervene({"resid_pre.1": AddPerPrompt(vecs, positions=pos)}):
        via_iv = tiny_llama.last_logits(batch, start_layer=1, resid=h)
    assert torch.equal(by_hand, via_iv)
    assert not torch.equal(by_hand, tiny_llama.last_logits(batch))  # the edit did something
    with pytest.raises(InterpError, match="one vector per prompt"):
        with tiny_llama.intervene({"resid_pre.1": AddPerPrompt(vecs[:2])}):
            tiny_llama.last_logits(batch, start_layer=1, resid=h)


def test_choose_flip_uses_the_gap_over_random():
    f = {"layers": [2, 5], "alphas": [-3.0, 3.0, -30.0],
         "flip_rate_any": {"pattern": [0.9, 0.5], "random": [0.8, 0.1]},  # layer 2 flips more, but so does random
         "flip_rate": {"pattern": [[0.1, 0.1, 0.9], [0.3, 0.3, 0.2]], "random": [[0, 0, 0.8], [0.1, 0.1, 0.1]]}}
    c = choose_flip(f)
    assert c["layer"] == 5 and c["alpha"] == -3.0 and c["ratio"] == pytest.approx(5.0)  # tie on gap: smaller |α|
    assert c["split"] == "validation"


def _two_layer_data(fractions=(0.6, 0.2, 0.2), seed=0, n=50, d=12):
    """Layer 0 carries the value for train and validation entities only; layer 1 a weaker copy for all."""
    from interp.protocol import split_groups

    rng = np.random.default_rng(5)
    ents = [f"e{i // 2}" for i in range(2 * n)]
    values = rng.normal(size=n)
    y = np.repeat(values, 2)
    s = split_groups(ents, fractions, seed, unit="entity")
    v = rng.normal(size=d)
    layer0 = y[:, None] * v + 0.05 * rng.normal(size=(2 * n, d))
    layer0[s.test] = rng.normal(size=(len(s.test), d)) * 3  # nothing to read for test entities
    layer1 = y[:, None] * v + 1.5 * rng.normal(size=(2 * n, d))
    return np.stack([layer0, layer1]), y, ents, s


def test_layer_is_chosen_on_validation_and_test_is_read_there():
    X, y, ents, s = _two_layer_data()
    fit = numeric.fit_probes(X, y, ents, [0, 1], [0], n_components=2, seed=0, progress=False)
    rep = fit["report"]
    assert rep["best_layer"] == 0 and rep["pls_r2"][0] > rep["pls_r2"][1]  # validation prefers layer 0 ...
    assert rep["best_r2"] < 0.2 and rep["test"]["layer"] == 0  # ... and test is read there, though layer 1 is better
    test_at_1 = heldout_scores(X[1:], y, s.train, s.test, 2, progress=False)["pls"][0]
    assert test_at_1 > 0.5
    names = fit["names"]
    assert not (set(names["train"]) & set(names["val"]) or set(names["val"]) & set(names["test"])
                or set(names["train"]) & set(names["test"]))
    assert fit["protocol"]["selected_on"] == "validation" and fit["protocol"]["split_unit"] == "entity"
    assert fit["protocol"]["groups"] == {"train": 30, "val": 10, "test": 10}
    assert set(fit["directions"][0]) == {"pattern", "filter"}


def test_run_writes_report_with_protocol(tiny_llama, tmp_path):
    cfg = numeric.Config(attribute="atomic_number", max_entities=25, filter_known=False, n_pairs=6, n_random=2,
                         alphas=(-4.0, 4.0), progress=False)
    rep = numeric.run(tiny_llama, cfg, tmp_path).report
    saved = json.loads((tmp_path / "report.json").read_text())
    assert json.loads((tmp_path / "probe.json").read_text())["pls_r2"] == saved["pls_r2"]
    for key in ("pls_r2", "baselines", "flip_rate_pls", "flip_rate_random", "flip_rate_filter", "flip", "flip_test",
                "best_layer", "projection", "test", "protocol"):
        assert key in saved
    assert saved["protocol"]["selected_on"] == "validation" and saved["protocol"]["split_unit"] == "entity"
    assert saved["protocol"]["groups"] == {"train": 15, "val": 5, "test": 5}
    assert len(saved["pls_r2"]) == tiny_llama.n_layers == len(saved["baselines"]["ridge"])
    assert len(saved["flip"]["layers"]) == len(numeric.default_flip_layers(tiny_llama.n_layers))
    assert saved["flip_test"]["layers"] == [saved["best_flip_layer"]]  # test runs only at the chosen layer
    assert rep["n_entities"] == 25 and len(saved["projection"]["xy"]) == 5 and saved["projection"]["split"] == "test"
    assert rep["best_r2"] == saved["test"]["pls_r2"] and rep["best_r2_val"] == max(rep["pls_r2"])
    assert "plotly" in (tmp_path / "report.html").read_text()[:5_000_000]
    with pytest.raises(InterpError, match="at least 10"):
        numeric.run(tiny_llama, numeric.Config(attribute="atomic_number", max_entities=8, filter_known=False,
                                               progress=False))


def test_recall_filter_runs_for_every_attribute(tiny_llama, monkeypatch):
    """The atomic-number run used to skip the filter: with the default config, only the recalled entities stay."""
    import interp.generation

    names, z = load_entities("atomic_number", 30)
    known = set(names[:12])
    monkeypatch.setattr(interp.generation, "generate", lambda model, prompts, **kw: [
        str(int(next(v for n, v in zip(names, z) if f" {n}?" in p))) if any(f" {n}?" in p for n in known)
        else "I am not sure" for p in prompts])
    cfg = numeric.Config(attribute="atomic_number", max_entities=30, n_pairs=4, n_random=1, alphas=(3.0,),
                         layers=[0, 1], flip_layers=[0], progress=False, run_flip=False)
    assert cfg.filter_known
    r = numeric.run(tiny_llama, cfg)
    assert r["recall"]["n_known"] == 12 and r["n_entities"] == 12
    assert set(r.report["projection"]["entities"]) <= known


def test_seeds_report_mean_and_spread(tiny_llama):
    cfg = numeric.Config(attribute="atomic_number", max_entities=30, filter_known=False, layers=[0, 1],
                         flip_layers=[0], n_pairs=4, n_random=1, alphas=(-8.0, 8.0), seeds=[0, 1, 2], progress=False)
    r = numeric.run(tiny_llama, cfg)
    summ = r["seeds"]["headlines"]
    first = r.headlines[0]
    per = summ[first.name]["per_seed"]
    assert list(per) == [0, 1, 2] and len(set(per.values())) == 3  # another split per seed, another R²
    assert first.value == pytest.approx(np.mean(list(per.values())))
    assert "mean over seeds [0, 1, 2]" in first.split and "±" in first.note
    assert per[0] == r["best_r2"]  # the report's own numbers are the first seed's
    assert r.protocol["seeds"] == [0, 1, 2] and r.protocol["selected_on"] == "validation"
    # a seed's numbers do not depend on the other seeds of the sweep (the capture, with the partners drawn by
    # config.seed, is shared)
    again = numeric.run(tiny_llama, numeric.Config(**{**cfg.__dict__, "seeds": [2, 1]}))
    assert again["seeds"]["headlines"][first.name]["per_seed"] == {2: per[2], 1: per[1]}


def test_cli_registers_numeric():
    from interp.cli import build_parser

    args = build_parser().parse_args(["numeric", "m", "--attribute", "latitude", "--out", "o", "--no-filter"])
    assert args.attribute == "latitude" and args.no_filter and args.components == 5 and args.seeds is None
    from interp.commands.numeric import config_from_args

    cfg = config_from_args(build_parser().parse_args(["numeric", "m", "--attribute", "latitude", "--out", "o",
                                                      "--seeds", "0", "1", "2", "--random", "2", "--no-flip"]))
    assert cfg.seeds == [0, 1, 2] and cfg.n_random == 2 and not cfg.run_flip and cfg.filter_known
    assert cfg.alphas == list(numeric.PAPER_ALPHAS) and len(cfg.alphas) == 40 and cfg.alphas[0] == -30
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
                         alphas=[-4.0, 4.0], layers=[0, 1], flip_layers=[0], progress=False)
    result = numeric.run(tiny_llama, cfg, out=tmp_path)
    assert result.experiment == "numeric"
    assert result["best_layer"] == [0, 1][int(np.argmax(result["pls_r2"]))]  # the validation argmax
    names = [h.name for h in result.headlines]
    assert any("PLS R²" in n for n in names) and any("flip rate, PLS direction" in n for n in names)
    assert any("read-out" in n for n in names) and any("shuffled" in n for n in names)
    assert all(h.split.startswith("test: ") and "chosen on validation" in h.split for h in result.headlines)
    assert "5 held-out entities" in result.headlines[0].split
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
    ({"fractions": (0.8, 0.2, 0.0)}, "three positive shares"),
    ({"seeds": [1, 1]}, "distinct"),
    ({"n_random": 0}, ">= 1"),
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
                     "--max-entities", "20", "--flip-layers", "0", "--alphas", "-8", "8", "--pairs", "4",
                     "--random", "1"])
    assert rc == 0 and (tmp_path / "atomic_number" / "report.json").exists()
    assert "atomic_number" in capsys.readouterr().out
    assert probe.main(["tiny", "--attributes", "shoe_size", "--out", str(tmp_path)]) == 2


# ----------------------------------------------------------------- the paper's claim on a real model

@pytest.mark.slow
def test_pls_beats_shuffled_targets_on_held_out_entities(qwen):
    """El-Shangiti et al.'s probing claim on the packaged Qwen 0.5B model: the entity's birth year is read
    from the residual stream of held-out test entities better than the same PLS probe fitted on shuffled
    targets, at the layer chosen on validation, for each of three entity splits.

    The recall filter is off here to keep the test under two minutes (it decodes a reply per entity); the
    claim is about the probe on entities it never saw, which the split guarantees. Measured on these
    settings (2026-11-30): test R² minus shuffled R² 1.53, 0.72, 0.48 for seeds 0, 1, 2 (PLS 0.169, 0.066,
    −0.308; shuffled −1.366, −0.659, −0.787), mean 0.91. Thresholds: every seed above 0.2 (the smallest
    measured gap less a margin of 0.28) and the mean above 0.5 (margin 0.4).
    """
    cfg = numeric.Config(attribute="birth_year", filter_known=False, max_entities=60, layers=[4, 8, 12, 16],
                         run_flip=False, seeds=[0, 1, 2], progress=False)
    r = numeric.run(qwen, cfg)
    per = r["seeds"]["headlines"]
    pls = per["PLS R² of birth_year"]["per_seed"]
    shuffled = per["R² of PLS on shuffled targets"]["per_seed"]
    gaps = [pls[s] - shuffled[s] for s in (0, 1, 2)]
    assert r.protocol["selected_on"] == "validation" and r.protocol["groups"]["test"] == 12
    assert min(gaps) > 0.2, gaps
    assert sum(gaps) / 3 > 0.5, gaps
