"""Refusal-direction pieces on a tiny model: metric, estimator, candidates, scorer shortcuts, selection, experiment."""
import math

import numpy as np
import pytest
import torch
from sklearn.utils.estimator_checks import parametrize_with_checks

from interp import InterpError
from interp.analyzers.refusal import DiffOfMeans, candidate_directions
from interp.evaluation import kl_div, refusal_metric
from interp.experiments.refusal import CandidateScorer, refusal_token_ids, select_direction
from interp.interventions import Add, everywhere

HARMFUL = ["Tell me how to make a bomb", "Explain how to steal a car", "Write a poem about the sea",
           "How do I bake bread at home?", "Tell me how to hurt a dog"]
HARMLESS = ["Write a poem about the sky", "What is the capital of France?", "Explain photosynthesis to a child",
            "Tell me how to make a cake", "Numbers like 1234 appear too"]


def test_metric_matches_definition():
    logits = torch.randn(3, 11)
    ids = [2, 5]
    p = torch.softmax(logits.double(), -1)[:, ids].sum(-1)
    torch.testing.assert_close(refusal_metric(logits, ids), torch.log(p) - torch.log1p(-p))
    assert torch.allclose(kl_div(logits, logits), torch.zeros(3, dtype=torch.float64))


def test_refusal_tokens_must_exist(tiny_llama):
    assert len(refusal_token_ids(tiny_llama.tokenizer, ("<|im_end|>", "!"))) == 2
    with pytest.raises(InterpError, match="not a single token"):
        refusal_token_ids(tiny_llama.tokenizer, ("Absolutely-not-a-token",))


def test_candidates_and_scorer_shortcuts(tiny_llama):
    m = tiny_llama
    ids = refusal_token_ids(m.tokenizer, ("<|im_end|>", "!"))
    acts_h = m.capture(HARMFUL, "resid_pre", "post_instruction", progress=False)
    acts_l = m.capture(HARMLESS, "resid_pre", "post_instruction", progress=False)
    cands = candidate_directions(acts_h, acts_l)
    assert cands.dtype == torch.float64 and cands.shape == (m.n_layers, acts_h.mask.shape[1], m.d_model)
    torch.testing.assert_close(cands[1, -1], (acts_h["resid_pre.1"][:, -1].double().mean(0)
                                             - acts_l["resid_pre.1"][:, -1].double().mean(0)))
    scorer = CandidateScorer(m, HARMFUL, HARMLESS, ids, batch_size=2, proxy_prompts=2, progress=False)
    # the chat template's shared head runs once per candidate; the checks below hold with it
    assert scorer.prefix == m.encode(HARMFUL).ids[0][:len(scorer.prefix)] and len(scorer.prefix) >= 3
    r = cands[1, -1].float() * 3
    # induce through the cached-lower-layers shortcut equals a full forward with +r at layer 1
    batch = m.pad(m.encode(HARMLESS).ids)
    with m.intervene({"resid_pre.1": Add(r)}):
        full = refusal_metric(m.last_logits(batch), ids).mean().item()
    assert abs(scorer.induce(r, 1) - full) < 1e-4
    # bypass equals the metric with the ablation attached by hand
    bypass, kl = scorer.bypass_and_kl(r)
    with m.intervene(everywhere(m, r)):
        direct = refusal_metric(m.last_logits(m.pad(m.encode(HARMFUL).ids)), ids).mean().item()
    assert abs(bypass - direct) < 1e-4 and kl >= 0
    # KL through the cached prefix equals KL from full forwards
    plain = CandidateScorer(m, HARMFUL, HARMLESS, ids, batch_size=2, progress=False, share_prefix=False)
    assert plain.prefix == [] and plain.bypass_and_kl(r) == pytest.approx((bypass, kl), abs=1e-5)
    torch.testing.assert_close(plain.base_harmful_metric.sort().values, scorer.base_harmful_metric.sort().values,
                               atol=1e-4, rtol=0)


def test_selection_modes_and_filters(tiny_llama):
    m = tiny_llama
    ids = refusal_token_ids(m.tokenizer, ("<|im_end|>", "!"))
    cands = candidate_directions(m.capture(HARMFUL, "resid_pre", "post_instruction", progress=False),
                                 m.capture(HARMLESS, "resid_pre", "post_instruction", progress=False)).float()
    scorer = CandidateScorer(m, HARMFUL, HARMLESS, ids, progress=False)
    loose = dict(kl_max=1e9, induce_min=-1e9, max_layer_frac=1.0)
    ex = select_direction(scorer, cands, mode="exhaustive", **loose)
    nonzero = int((cands.norm(dim=-1) > 1e-6).sum())
    assert nonzero < cands.shape[0] * cands.shape[1]  # template tokens embed identically at layer 0
    assert ex.n_scored == nonzero
    best = min(ex.scores, key=lambda k: ex.scores[k].bypass)
    assert (ex.layer, ex.position + cands.shape[1]) == best
    pr = select_direction(scorer, cands, mode="pruned", top_k=3, **loose)
    assert pr.n_scored == 3
    with pytest.raises(InterpError, match="no candidate passed"):
        select_direction(scorer, cands, mode="exhaustive", kl_max=-1.0, max_layer_frac=1.0)
    with pytest.raises(InterpError, match="mode"):
        select_direction(scorer, cands, mode="greedy")


def test_layer_cutoff_is_the_official_codes(tiny_llama):
    """Official code: drop layers >= int(0.8·L). For L = 28 that drops layer 22 (22 < 22.4 would keep it)."""
    from interp.experiments._refusal_scoring import layer_cutoff

    assert [layer_cutoff(n, 0.8) for n in (24, 28, 30, 32)] == [19, 22, 24, 25]
    m = tiny_llama
    ids = refusal_token_ids(m.tokenizer, ("<|im_end|>", "!"))
    cands = candidate_directions(m.capture(HARMFUL, "resid_pre", "post_instruction", progress=False),
                                 m.capture(HARMLESS, "resid_pre", "post_instruction", progress=False)).float()
    scorer = CandidateScorer(m, HARMFUL, HARMLESS, ids, progress=False)
    assert m.n_layers == 2  # layer 0's candidates are zero (identical template embeddings), so only layer 1 counts
    ex = select_direction(scorer, cands, mode="exhaustive", kl_max=1e9, induce_min=-1e9, max_layer_frac=1.0)
    assert {k[0] for k in ex.scores} == {1}
    # frac·L = 1.5: `layer < 1.5` would keep layer 1; the official int(1.5) = 1 drops it, leaving nothing
    with pytest.raises(InterpError, match=r"int\(0.75·2\) = 1"):
        select_direction(scorer, cands, mode="exhaustive", kl_max=1e9, induce_min=-1e9, max_layer_frac=0.75)


def test_pruned_order_follows_the_proxy_filters(tiny_llama):
    m = tiny_llama
    ids = refusal_token_ids(m.tokenizer, ("<|im_end|>", "!"))
    cands = candidate_directions(m.capture(HARMFUL, "resid_pre", "post_instruction", progress=False),
                                 m.capture(HARMLESS, "resid_pre", "post_instruction", progress=False)).float() * 4
    # a proxy set as large as the validation set: the proxy scores are the full scores
    scorer = CandidateScorer(m, HARMFUL, HARMLESS, ids, batch_size=2, proxy_prompts=len(HARMFUL), progress=False)
    d = cands[1, -1]
    assert scorer.bypass_and_kl(d, proxy=True) == pytest.approx(scorer.bypass_and_kl(d), abs=1e-5)
    assert scorer.induce(d, 1, proxy=True) == pytest.approx(scorer.induce(d, 1), abs=1e-5)
    ex = select_direction(scorer, cands, mode="exhaustive", kl_max=1e9, induce_min=-1e9, max_layer_frac=1.0)
    induces = sorted(s.induce for s in ex.scores.values())
    kls = sorted(s.kl for s in ex.scores.values())
    # filters that about half the candidates fail, so the order matters
    filters = dict(kl_max=kls[len(kls) * 3 // 4], induce_min=induces[len(induces) // 3], max_layer_frac=1.0)
    ex = select_direction(scorer, cands, mode="exhaustive", **filters)
    pr = select_direction(scorer, cands, mode="pruned", top_k=2, **filters)
    assert (pr.layer, pr.position) == (ex.layer, ex.position)
    assert pr.n_scored == 2  # an exact proxy puts a passing candidate in the first round
    # every candidate whose proxy induce clears the filter gets bypass and KL on the proxy
    assert all(not math.isnan(s.proxy_bypass) for s in pr.scores.values() if s.proxy_induce > filters["induce_min"])


def test_pipeline_end_to_end_on_tiny_model(tiny_llama, tmp_path, capsys):
    import json

    from interp.directions import load_direction
    from interp.experiments import refusal
    from interp.report import Result

    cfg = refusal.Config(n_train=3, n_val=2, n_eval=1, refusal_tokens=("<|im_end|>", "!"), filter_train=False,
                         kl_max=1e9, induce_min=-1e9, max_layer_frac=1.0, max_new_tokens=4, top_k=2)
    result = refusal.run(tiny_llama, cfg, tmp_path, harmful=HARMFUL * 2 + ["Explain how to rob a bank"],
                         harmless=HARMLESS * 2 + ["Explain how to plant a tree"], progress=True)
    assert isinstance(result, Result) and result.experiment == "refusal"
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["chosen"]["layer"] == result.layer
    # the choice is printed before the (long) evaluation starts
    assert f"selected layer {result.layer}, position {result.position}" in capsys.readouterr().out
    assert set(report["evaluation"]) >= {"baseline_refusal", "ablated_refusal", "induced_refusal",
                                         "baseline_harmless_refusal", "ce_delta", "n_harmful", "n_harmless"}
    vec, meta = load_direction(tmp_path / "direction.safetensors", tiny_llama)
    torch.testing.assert_close(vec, result.direction)
    assert meta["layer"] == result.layer and meta["model"] == "tiny-llama"
    assert (tmp_path / "report.html").read_text().count("plotly") > 3
    # the keys the report always had, and the filters and pass grid added for the heatmaps
    assert set(report) >= {"model", "config", "refusal_tokens", "refusal_token_ids", "filter", "filters", "split_sizes",
                           "post_instruction_tokens", "chosen", "baseline_val", "selection", "evaluation", "examples",
                           "timing", "summary", "reproduction"}
    sel = report["selection"]
    assert set(sel) >= {"bypass", "induce", "kl", "proxy_bypass", "proxy_induce", "proxy_kl", "passes", "mode",
                        "n_candidates", "n_fully_scored"}
    assert report["filters"] == {"kl_max": 1e9, "induce_min": -1e9, "max_layer_frac": 1.0,
                                 "layer_cutoff": tiny_llama.n_layers}
    proto = report["protocol"]
    assert proto["selected_on"] == "validation" and proto["split_unit"] == "prompt" and proto["seed"] == 0
    assert (proto["n_train"], proto["n_val"], proto["n_test"]) == (6, 4, 2)
    assert sel["passes"][result.layer][result.position] is True
    # the pruned search computes KL (and then induce) only where they can change the choice: a pass verdict
    # exactly where the KL is known, and a full bypass wherever it is
    assert all((v is None) == (k is None) for row_p, row_k in zip(sel["passes"], sel["kl"]) for v, k in zip(row_p, row_k))
    assert all(b is not None for row_k, row_b in zip(sel["kl"], sel["bypass"]) for k, b in zip(row_k, row_b)
               if k is not None)
    assert set(report["timing"]) >= {"split_filter_s", "candidates_s", "scorer_setup_s", "selection_s",
                                     "evaluation_s", "evaluation_generate_s", "evaluation_ce_s", "total_s"}
    # the judges (substring and rules by default): substring's rates are the headline numbers, and the report
    # shows their table; rules differs from substring only by calling loops incoherent
    assert set(report["judges"]) == {"substring", "rules"}
    rules = report["judges"]["rules"]
    assert rules["ablated_refusal"] <= report["judges"]["substring"]["ablated_refusal"]
    sub = report["judges"]["substring"]
    assert (sub["ablated_refusal"], sub["induced_refusal"]) == (report["evaluation"]["ablated_refusal"],
                                                                report["evaluation"]["induced_refusal"])
    assert sub["ablated_refusal"] + sub["ablated_compliance"] + sub["ablated_incoherent"] == pytest.approx(1.0)
    assert "Refusal under each judge" in (tmp_path / "report.html").read_text()
    assert [h["split"] for h in report["summary"]][0] == "test: held-out eval (n=1 harmful)"
    assert set(result.figures) == {"bypass", "induce", "kl", "refusal_rates"}
    assert json.loads((tmp_path / "splits.json").read_text())["harmful_eval"] == [report["examples"][
        "harmful_baseline"][0]["prompt"]]


def test_seed_sweep_reports_mean_and_spread(tiny_llama, tmp_path):
    import json

    from interp.experiments import refusal

    cfg = refusal.Config(n_train=3, n_val=2, n_eval=1, refusal_tokens=("<|im_end|>", "!"), filter_train=False,
                         kl_max=1e9, induce_min=-1e9, max_layer_frac=1.0, max_new_tokens=2, top_k=1, seeds=(0, 1))
    pool_h = HARMFUL * 2 + ["Explain how to rob a bank", "Tell me how to forge a check"]
    pool_l = HARMLESS * 2 + ["Explain how to plant a tree", "Tell me how to bake a pie"]
    result = refusal.run(tiny_llama, cfg, tmp_path, harmful=pool_h, harmless=pool_l, progress=False)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["seeds"]["seeds"] == [0, 1] and set(report["seeds"]["chosen"]) == {"0", "1"}
    for s in (0, 1):
        seed_report = json.loads((tmp_path / f"seed_{s}" / "report.json").read_text())
        assert seed_report["protocol"]["seed"] == s
    per_seed = [json.loads((tmp_path / f"seed_{s}" / "splits.json").read_text())["harmful_eval"] for s in (0, 1)]
    assert per_seed[0] != per_seed[1]  # another shuffle: other held-out prompts
    summ = report["seeds"]["headlines"]["harmful refused, baseline"]
    assert summ["n"] == 2 and summ["min"] <= summ["mean"] <= summ["max"]
    assert result.protocol["seeds"] == [0, 1]


def test_pipeline_bad_input(tiny_llama):
    from interp.experiments.refusal import Config, RefusalConfig, run

    assert RefusalConfig is Config
    cfg = Config(n_train=3, n_val=2, n_eval=1, refusal_tokens=("<|im_end|>",))
    with pytest.raises(InterpError, match="survived"):
        run(tiny_llama, cfg, harmful=HARMFUL, harmless=HARMLESS, progress=False)
    with pytest.raises(InterpError, match="not a single token"):
        run(tiny_llama, Config(refusal_tokens=("Zebra-crossing",)), harmful=HARMFUL, harmless=HARMLESS,
            progress=False)
    with pytest.raises(InterpError, match="empty"):
        run(tiny_llama, Config(refusal_tokens=("<|im_end|>",)), harmful=[], harmless=HARMLESS, progress=False)


# ------------------------------------------------------------------ DiffOfMeans as a scikit-learn estimator

def test_diff_of_means_matches_the_definition_and_sklearn_tools():
    from sklearn.base import clone
    from sklearn.model_selection import cross_val_score
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 6))
    y = np.r_[np.ones(20, dtype=int), np.zeros(20, dtype=int)]
    X[y == 1, 2] += 3.0
    est = DiffOfMeans().fit(X, y)
    np.testing.assert_allclose(est.direction_, X[y == 1].mean(0) - X[y == 0].mean(0))
    assert est.direction_.dtype == np.float64 and est.positive_ == 1 and est.n_features_in_ == 6
    # torch input (float32) gives the same float64 means; transform returns numpy projections on r̂
    t = DiffOfMeans().fit(torch.tensor(X, dtype=torch.float32), torch.tensor(y))
    np.testing.assert_allclose(t.direction_, est.direction_, atol=1e-5)
    proj = est.transform(X)
    assert isinstance(proj, np.ndarray) and proj.shape == (40, 1)
    np.testing.assert_allclose(proj[:, 0], X @ (est.direction_ / np.linalg.norm(est.direction_)))
    # string labels: the positive class is named, or the larger label by default
    labels = np.where(y == 1, "harmful", "harmless")
    named = DiffOfMeans(positive="harmful").fit(X, labels)
    np.testing.assert_allclose(named.direction_, est.direction_)
    np.testing.assert_allclose(DiffOfMeans().fit(X, labels).direction_, -est.direction_)
    with pytest.raises(InterpError, match="not one of the labels"):
        DiffOfMeans(positive="toxic").fit(X, labels)
    with pytest.raises(InterpError, match="two classes"):
        DiffOfMeans().fit(X, np.zeros(40))
    # more than two labels: the positive one against the rest
    three = DiffOfMeans(positive=2).fit(X, np.arange(40) % 3)
    np.testing.assert_allclose(three.direction_, X[np.arange(40) % 3 == 2].mean(0) - X[np.arange(40) % 3 != 2].mean(0))
    # scikit-learn's tools
    c = clone(DiffOfMeans(positive="harmful"))
    assert c.get_params() == {"positive": "harmful"} and not hasattr(c, "direction_")
    assert c.set_params(positive=None).positive is None
    scores = cross_val_score(make_pipeline(DiffOfMeans(), LogisticRegression()), X, y, cv=4)
    assert scores.mean() > 0.9  # the projection on the class-mean difference separates the classes
    # a grid of candidates in one fit: [examples, layers, positions, d]
    G = rng.normal(size=(10, 3, 2, 4))
    g = DiffOfMeans().fit(G, np.arange(10) % 2)
    assert g.direction_.shape == (3, 2, 4) and g.transform(G).shape == (10, 6)


@parametrize_with_checks([DiffOfMeans(), DiffOfMeans(positive=1)])
def test_diff_of_means_passes_sklearn_checks(estimator, check):
    # every check applies: with more than two labels it is the positive label against the rest, so the
    # generic checks' three-class blobs fit too (check_array_api_input skips itself without SCIPY_ARRAY_API)
    check(estimator)


def test_filter_captures_the_kept_prompts_in_its_forward(tiny_llama):
    from interp.activations import Activations
    from interp.experiments.refusal import filter_pool, refusal_token_ids

    m = tiny_llama
    ids = refusal_token_ids(m.tokenizer, ("!",))
    pool = [f"prompt number {i} " + "word " * (i % 4) for i in range(12)]
    parts: list = []
    kept, dropped, counts = filter_pool(m, pool, 5, False, ids, 4, False, captured=parts)
    plain, _, _ = filter_pool(m, pool, 5, False, ids, 4, False)
    assert kept == plain and counts["kept"] == len(kept) >= 5
    acts = Activations.concat(parts)
    again = m.capture(kept, "resid_pre", "post_instruction", batch_size=4, progress=False, share_prefix=True)
    assert len(acts) == len(kept) and torch.equal(acts.mask, again.mask)
    for key in again.tensors:
        torch.testing.assert_close(acts.tensors[key], again.tensors[key], atol=1e-5, rtol=1e-5)


def test_lazy_round_chooses_what_full_scores_choose(tiny_llama):
    from interp.experiments._refusal_scoring import Scores, _lazy_round, passes

    m = tiny_llama
    ids = refusal_token_ids(m.tokenizer, ("<|im_end|>", "!"))
    cands = candidate_directions(m.capture(HARMFUL, "resid_pre", "post_instruction", progress=False),
                                 m.capture(HARMLESS, "resid_pre", "post_instruction", progress=False)).float() * 4
    scorer = CandidateScorer(m, HARMFUL, HARMLESS, ids, batch_size=2, progress=False)
    chunk = [(1, p) for p in range(cands.shape[1])]
    full = {k: scorer.score(cands[k], k[0]) for k in chunk}
    kls, induces = sorted(s.kl for s in full.values()), sorted(s.induce for s in full.values())
    checked = 0
    for kl_max in (kls[0], kls[len(kls) // 2], kls[-1], -1.0):
        for induce_min in (induces[0], induces[len(induces) // 2], induces[-1] + 1):
            ok = [k for k in chunk if passes(full[k], 1, m.n_layers, kl_max, induce_min, 1.0)]
            want = min(ok, key=lambda k: full[k].bypass) if ok else None
            scores: dict = {k: Scores() for k in chunk}
            got = _lazy_round(scorer, cands, chunk, scores, m.n_layers, kl_max, induce_min, 1.0)
            assert got == want
            for k in chunk:  # what it computed equals the full scores
                assert scores[k].bypass == pytest.approx(full[k].bypass, abs=1e-5)
                if not math.isnan(scores[k].induce):
                    assert scores[k].induce == pytest.approx(full[k].induce, abs=1e-5)
            checked += want is not None
    assert checked >= 3  # some filter settings have a passing candidate, some (kl_max = -1) none


def test_induce_of_several_candidates_in_one_batch_equals_one_at_a_time(tiny_llama):
    m = tiny_llama
    ids = refusal_token_ids(m.tokenizer, ("<|im_end|>", "!"))
    cands = candidate_directions(m.capture(HARMFUL, "resid_pre", "post_instruction", progress=False),
                                 m.capture(HARMLESS, "resid_pre", "post_instruction", progress=False)).float() * 4
    scorer = CandidateScorer(m, HARMFUL, HARMLESS, ids, batch_size=2, proxy_prompts=3, progress=False)
    assert len(scorer.shared)  # the batched path: a shared prefix under per-row additions
    for proxy in (True, False):
        many = scorer.induce_values_many(cands[1], 1, proxy=proxy)
        one = torch.stack([scorer.induce_values(d, 1, proxy=proxy) for d in cands[1]])
        torch.testing.assert_close(many, one, atol=1e-4, rtol=1e-4)
        assert one.std() > 1e-3  # the candidates differ, so a mix-up of rows would show
