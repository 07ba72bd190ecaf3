"""Patching sweeps, DAS and illusion checks on a tiny model (mechanics)."""
import pytest
import torch

from interp import InterpError
from interp.experiments.patching import (Config, PatchTask, Pairs, check_subspace, direction_effect, learn_das,
                                         mean_difference_direction, patching_sweep, run)


@pytest.fixture(scope="module")
def setup():
    from interp.testing import tiny_model

    m = tiny_model("llama", seed=1)
    clean = ["Tell me how to make a cake", "Write a poem about the sea"]
    corrupted = ["Tell me how to make a sea", "Write a poem about the sky"]
    ids = lambda w: m.tokenizer.encode(w, add_special_tokens=False)[0]  # noqa: E731
    task = PatchTask(clean, corrupted, torch.tensor([[ids("a"), ids("e")], [ids("o"), ids("t")]]))
    return m, task


def test_sweep_endpoints(setup):
    m, task = setup
    out = patching_sweep(m, task, ["resid_pre", "attn_z"], positions=[-1, -2], progress=False)
    grid = out["effects"]["resid_pre"]
    assert len(grid) == m.n_layers and len(grid[0]) == 2
    # patching the whole residual stream at layer 0 at every differing position restores the clean run;
    # at the last position of the last layer's input it restores the last-position logits exactly
    last = patching_sweep(m, task, ["resid_post"], layers=[m.n_layers - 1], positions=[-1], progress=False)
    assert last["effects"]["resid_post"][0][0] == pytest.approx(1.0, abs=1e-4)
    assert len(out["effects"]["attn_z"][0]) == m.n_heads


def test_das_full_space_and_checks(setup):
    m, task = setup
    site = f"mlp_act.{m.n_layers - 1}"
    v = learn_das(m, task, site, steps=30, lr=0.05, progress=False)
    assert v.shape == (m.d_mlp,) and abs(v.norm().item() - 1) < 1e-5
    random_v = torch.randn(m.d_mlp)
    random_v /= random_v.norm()
    assert direction_effect(m, task, site, v) > direction_effect(m, task, site, random_v)
    report = check_subspace(m, task, site, v)
    f = report.fraction_of_effect
    assert set(f) == {"full", "das", "rowspace", "nullspace"}
    assert abs(f["nullspace"]) < 1e-4  # the down projection cannot see it
    # the verdict follows from the numbers: faithful exactly when the rowspace part keeps half of v's effect
    assert report.verdict.startswith("faithful" if f["rowspace"] / f["das"] >= 0.5 else "illusory")
    # each part is patched along its UNIT vector (the paper's patch), the raw part only for the comparison
    from interp.analyzers.illusion import split_by_reader
    from interp.experiments.patching import reader_matrix

    row, _ = split_by_reader(v, reader_matrix(m, site))
    assert 0.05 < row.norm() < 0.999  # a part shorter than v, so unit and raw patches differ
    assert f["rowspace"] == pytest.approx(direction_effect(m, task, site, (row / row.norm()).float()), abs=1e-5)
    assert report.unnormalized["rowspace"] == pytest.approx(direction_effect(m, task, site, row.float()), abs=1e-5)
    assert abs(f["rowspace"] - report.unnormalized["rowspace"]) > 1e-3
    # the paper's FLDD on its own scale: 100·(1 − patched LD / base LD), base = the corrupted prompt's own answer
    pairs = Pairs(m, task)
    assert report.fldd["das"] == pytest.approx(100 * f["das"] * pairs.gap / -pairs.m_corr.mean().item(), rel=1e-4)
    assert report.fldd["full"] == pytest.approx(100 * f["full"] * pairs.gap / -pairs.m_corr.mean().item(), rel=1e-4)
    md = mean_difference_direction(m, task, site)
    assert abs(md.norm().item() - 1) < 1e-5


def test_bad_inputs(setup):
    m, task = setup
    uneven = PatchTask(["Tell me how to make a cake"], ["Tell me how to make a bomb"], task.answers[:1])
    with pytest.raises(InterpError, match="pair 0"):
        patching_sweep(m, uneven, ["resid_pre"], progress=False)
    with pytest.raises(InterpError, match="NaN"):
        patching_sweep(m, task, ["resid_pre"], metric=lambda logits, a: logits[:, 0] * float("nan"), progress=False)
    with pytest.raises(InterpError, match="does not match"):
        check_subspace(m, task, "mlp_act.0", torch.ones(5))
    with pytest.raises(InterpError, match="down projection"):
        check_subspace(m, task, "resid_pre.1", torch.ones(m.d_model))
    with pytest.raises(InterpError, match="should look like"):
        check_subspace(m, task, "resid_pre.1", torch.ones(m.d_model), readout="q.1")
    with pytest.raises(InterpError, match="at or after"):
        check_subspace(m, task, "resid_pre.1", torch.ones(m.d_model), readout="q.0:0")
    with pytest.raises(InterpError, match="unknown read-out"):
        check_subspace(m, task, "resid_pre.1", torch.ones(m.d_model), readout="keys")


def test_query_reader_sees_only_those_heads(setup):
    from interp.analyzers.illusion import split_by_reader
    from interp import arch
    from interp.experiments.patching import reader_matrix

    m, task = setup
    layer = m.n_layers - 1
    r = reader_matrix(m, "resid_pre.1", f"q.{layer}:0", task)
    assert r.shape == (m.d_head, m.d_model)
    # a direction in the reader's nullspace leaves head 0's query unchanged, whatever the norm does
    block = arch.blocks(m)[layer]
    x = torch.randn(3, m.d_model)
    row, null = split_by_reader(torch.randn(m.d_model), r)
    q = lambda h: block.self_attn.q_proj(h * block.input_layernorm.weight)[:, : m.d_head]  # noqa: E731
    assert torch.allclose(q(x + null.float()), q(x), atol=1e-4)
    assert not torch.allclose(q(x + row.float()), q(x), atol=1e-4)
    answers = reader_matrix(m, "resid_pre.1", "answers", task)
    assert answers.shape == (len(torch.unique(task.answers)), m.d_model)


def _bigger(task, k=2):
    return PatchTask(task.clean * k, task.corrupted * k, torch.cat([task.answers] * k))


def test_run_patching_report(setup, tmp_path):
    import json

    m, task = setup
    bigger = _bigger(task)
    result = run(m, Config(positions=(-1,), das_steps=3, progress=False), tmp_path, task=bigger)
    r = result.report
    saved = json.loads((tmp_path / "report.json").read_text())
    assert set(saved["fraction_of_effect"]) == {"full", "das", "rowspace", "nullspace"}
    assert saved["verdict"] == r["verdict"] and (tmp_path / "report.html").exists()
    assert saved["subspaces"]["resid"]["reader"].startswith("q.")  # the default read-out: later heads' queries
    assert saved["subspaces"]["mlp"]["site"] == f"mlp_act.{saved['subspaces']['resid']['site'].split('.')[1]}"
    for key in ("model", "n_pairs", "sweep", "subspaces", "reader_heads", "summary", "reproduction", "protocol"):
        assert key in saved
    names = [h["name"] for h in saved["summary"]]
    assert any("DAS direction, fraction of effect" in n for n in names)
    assert all(h["split"].startswith(("test pairs", "training")) for h in saved["summary"])
    # the paper's FLDD sits in its own headlines beside the paper's numbers; the 0→1 effect has no paper column
    fldd = [h for h in saved["summary"] if h["name"].endswith("FLDD (%)")]
    assert fldd and all(h["paper"] is not None or "nullspace" in h["name"] for h in fldd)
    assert all(h["paper"] is None for h in saved["summary"] if h["name"].endswith("fraction of effect"))
    p = saved["protocol"]
    assert p["selected_on"] == "validation" and p["split_unit"] == "pair"
    assert p["n_train"] + p["n_val"] + p["n_test"] == 4
    assert saved["sweep"]["split"].startswith("validation") and saved["chosen"]["on"] == "validation"
    assert [saved["metrics"][k]["n"] for k in ("train", "val", "test")] == [p["n_train"], p["n_val"], p["n_test"]]
    assert {"patching resid_pre", "patching attn_out", "patching mlp_out", "fraction of effect"} <= set(result.figures)
    with pytest.raises(InterpError, match="at least 4"):
        run(m, Config(progress=False), task=task)


def test_config_is_checked_before_any_model_work():
    from interp.experiments.patching import check_config

    for bad, msg in ((Config(pairs=2), "at least 4"), (Config(positions=(1,)), "negative"),
                     (Config(sites=("mlp_out",)), "resid_pre and attn_out"), (Config(sites=("resid", "attn_out")),
                                                                               "unknown sweep site"),
                     (Config(readout="keys"), "unknown read-out"), (Config(readout="q.3"), "should look like"),
                     (Config(split_by="token"), "split_by"), (Config(fractions=(0.5, 0.5, 0.0)), "fractions"),
                     (Config(seeds=(1, 1)), "distinct")):
        with pytest.raises(InterpError, match=msg):
            check_config(bad)
    with pytest.raises(InterpError, match="layers are 0..1"):
        check_config(Config(readout="q.2:0"), n_layers=2, n_heads=4)
    with pytest.raises(InterpError, match="resid_layer must be a layer in 0..1"):
        check_config(Config(resid_layer=5), n_layers=2)


def test_cli_validates_before_loading(monkeypatch, capsys):
    import interp.loading
    from interp.cli import main

    def no_load(*a, **k):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(interp.loading, "load_model", no_load)
    for argv in (["--positions", "0"], ["--sites", "resid_pre", "bogus"], ["--readout", "q.x:1"], ["--pairs", "3"],
                 ["--seeds", "1", "1"]):
        assert main(["patch", "tiny-model", "--out", "/tmp/unused"] + argv) != 0
        assert "error" in capsys.readouterr().err.lower()


def test_projection_patch_is_exact_and_trainable():
    from interp.interventions import Context, ProjectionPatch

    x, u = torch.randn(3, 4, 5), torch.randn(3, 4, 5)
    p = torch.randn(5, requires_grad=True)  # not unit: kept as given
    y = ProjectionPatch(p, u, positions=[-2]).apply(x, Context.whole(x))
    w = x[:, -2]
    expected = w + ((u[:, -2] - w) @ p)[:, None] * p
    assert torch.equal(y[:, -2], expected) and torch.equal(y[:, [0, 1, 3]], x[:, [0, 1, 3]])
    y.sum().backward()
    assert p.grad is not None and p.grad.abs().sum() > 0


def test_probe_prints_the_headlines(setup, monkeypatch, capsys):
    import importlib.util
    from pathlib import Path

    import interp.loading
    from interp.experiments import patching

    m, task = setup
    bigger = _bigger(task)
    real_run = patching.run
    monkeypatch.setattr(interp.loading, "load_model", lambda name: m)
    monkeypatch.setattr(patching, "run", lambda model, config, out=None: real_run(model, config, out, task=bigger))
    path = Path(__file__).resolve().parents[1] / "probes" / "patching_illusion.py"
    spec = importlib.util.spec_from_file_location("patching_probe", path)
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    assert probe.main(["tiny", "--positions", "-1", "--das-steps", "2"]) == 0
    out = capsys.readouterr().out
    assert "mlp_act." in out and "resid_pre." in out and "paper (GPT-2 small)" in out and "FLDD" in out


def test_each_split_is_used_for_its_stage_only(setup, monkeypatch):
    """The sweep sees validation pairs only, DAS training pairs only, the checks and controls test pairs only."""
    from interp.experiments import _patching, patching

    m, task = setup
    clean = [f"{c} {w}" for c in task.clean for w in ("now", "then", "here", "there")]  # 8 distinct pairs
    corrupted = [f"{c} {w}" for c in task.corrupted for w in ("now", "then", "here", "there")]
    ids = {w: m.tokenizer.encode(w, add_special_tokens=False)[0] for w in ("a", "e", "o", "t")}
    big = PatchTask(clean, corrupted, torch.tensor([[ids["a"], ids["e"]]] * 4 + [[ids["o"], ids["t"]]] * 4))
    seen = {"sweep": set(), "das": set(), "check": set(), "effect": set()}
    real = {"sweep": patching.sweep_pairs, "das": patching.learn_das, "check": patching.check_subspace,
            "effect": patching.direction_effect}

    def spy(stage):
        def f(model_or_pairs, *a, **k):
            pairs = model_or_pairs if stage == "sweep" else a[0]
            seen[stage].update(pairs.task.clean)
            return real[stage](model_or_pairs, *a, **k)
        return f

    for stage, name in (("sweep", "sweep_pairs"), ("das", "learn_das"), ("check", "check_subspace"),
                        ("effect", "direction_effect")):
        monkeypatch.setattr(patching, name, spy(stage))
    r = run(m, Config(positions=(-1,), das_steps=1, random_directions=2, progress=False), task=big).report
    p = r["protocol"]
    assert (p["n_train"], p["n_val"], p["n_test"]) == (4, 2, 2)
    assert len(seen["sweep"]) == 2 and len(seen["das"]) == 4 and len(seen["check"]) == 2
    assert not seen["sweep"] & seen["das"] and not seen["sweep"] & seen["check"] and not seen["das"] & seen["check"]
    assert seen["effect"] == seen["das"] | seen["check"]  # DAS's training effect, then test-only controls
    assert len(r["subspaces"]["mlp"]["random_effect"]) == 2
    assert _patching is not None


def test_seeds_report_mean_and_spread(setup):
    import statistics

    m, task = setup
    result = run(m, Config(positions=(-1,), das_steps=2, seeds=(0, 1), progress=False), task=_bigger(task, 3))
    name = next(h.name for h in result.headlines if h.name.endswith("DAS direction, fraction of effect"))
    per_seed = result["seeds"]["headlines"][name]["per_seed"]
    assert set(per_seed) == {0, 1} and per_seed[0] != per_seed[1]  # each seed: another split and DAS start
    h = next(h for h in result.headlines if h.name == name)
    assert h.value == pytest.approx(statistics.mean(per_seed.values()))
    assert f"{statistics.stdev(per_seed.values()):.3f}" in h.note and "mean over seeds [0, 1]" in h.split
    assert result.protocol["seeds"] == [0, 1]


class _WordTokenizer:
    """One token per space-separated word: enough for ioi_splits without a model."""

    def __init__(self):
        self.vocab = {}

    def encode(self, text, add_special_tokens=False):
        return [self.vocab.setdefault(w, len(self.vocab)) for w in text.split()]


def test_ioi_splits_keep_templates_and_names_apart():
    from types import SimpleNamespace

    from interp.data.ioi import ioi_splits

    model = SimpleNamespace(tokenizer=_WordTokenizer())
    tasks, info = ioi_splits(model, n=40, seed=3)
    assert [len(tasks[s].clean) for s in ("train", "val", "test")] == [20, 10, 10]
    for key in ("templates", "names"):
        parts = [set(info[key][s]) for s in ("train", "val", "test")]
        assert all(parts) and not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    for s in ("train", "val", "test"):
        words = {w.strip(",.") for c in tasks[s].clean for w in c.split()}
        others = set().union(*(info["names"][o] for o in ("train", "val", "test") if o != s))
        assert not words & others  # no name of another split appears in this split's prompts
    assert info["splits"].unit == "template and name" and len(info["splits"].test) == 10
    again, _ = ioi_splits(model, n=40, seed=3)
    assert again["test"].clean == tasks["test"].clean  # the split is a function of the seed
    assert ioi_splits(model, n=40, seed=4)[0]["test"].clean != tasks["test"].clean


# the upper-blocks fast path (llama) and the full-forward fallback (gpt2); seeds whose clean−corrupted gap is
# not tiny (0.13, 0.12), since effects are divided by it and float rounding would be magnified
@pytest.mark.parametrize("arch,seed", [("llama", 2), ("gpt2", 3)])
def test_stacked_sweep_equals_one_forward_per_patch(arch, seed):
    """The batched sweep (patch × pair rows, blocks from the patched layer up) gives each patch's own effect."""
    from interp.experiments.patching import sweep_pairs
    from interp.interventions import Patch
    from interp.testing import tiny_model

    m = tiny_model(arch, seed=seed, n_layers=2)
    clean = ["Tell me how to make a cake", "Write a poem about the sea today", "Say hi"]
    corrupted = ["Tell me how to make a sea", "Write a poem about the sky today", "Say he"]
    ids = lambda w: m.tokenizer.encode(w, add_special_tokens=False)[0]  # noqa: E731
    task = PatchTask(clean, corrupted, torch.tensor([[ids("a"), ids("e")], [ids("o"), ids("t")], [ids("i"), ids("y")]]))
    pairs = Pairs(m, task)
    assert len(set(pairs.clean["attention_mask"].sum(1).tolist())) > 1  # padded rows are part of the check
    layers, positions = [0, 1], [-1, -2, -4]
    sites = ["resid_pre", "attn_out", "mlp_out", "attn_z"]
    want = {}  # one corrupted forward per patch, the sweep as it was
    for name in sites:
        cache = pairs.cache([f"{name}.{layer}" for layer in layers])
        for layer in layers:
            site = f"{name}.{layer}"
            if name == "attn_z":
                want[site] = [pairs.effect({site: Patch(cache, site, positions="prompt", heads=[h])}).mean().item()
                              for h in range(m.n_heads)]
            else:
                want[site] = [pairs.effect({site: Patch(cache, site, positions=[p])}).mean().item() for p in positions]
            assert max(abs(w) for w in want[site]) > 1e-3  # patches that do something
    for rows in (256, 4):  # everything of a layer in one forward; chunks that split a position's pairs
        got = sweep_pairs(pairs, sites, layers=layers, positions=positions, progress=False, batch_rows=rows)
        for name in sites:
            for li, layer in enumerate(layers):
                site = f"{name}.{layer}"
                assert got["effects"][name][li] == pytest.approx(want[site], abs=1e-5), (rows, site)
    with pytest.raises(InterpError, match="batch_rows"):
        sweep_pairs(pairs, ["resid_pre"], layers=[0], positions=[-1], progress=False, batch_rows=0)
