"""Attribution patching (interp.attribution): exactness where the metric is linear, per-head gradients, the
CLI, and on smollm2's IOI pairs its agreement with the real activation-patching sweep and its speed-up."""
import json

import pytest
import torch

from interp import InterpError
from interp.attribution import attribution_patching, compare_with_patching, spearman
from interp.data.ioi import PatchTask
from interp.experiments.patching import patching_sweep

CLEAN = ["Tell me how to make a cake", "Write a poem about the sea"]
CORRUPTED = ["Tell me how to make a sea", "Write a poem about the sky"]


def _task(m):
    ids = lambda w: m.tokenizer.encode(w, add_special_tokens=False)[0]  # noqa: E731
    return PatchTask(CLEAN, CORRUPTED, torch.tensor([[ids("a"), ids("e")], [ids("o"), ids("t")]]))


@pytest.fixture(scope="module")
def linear_top():
    """A tiny llama whose metric is linear in its last layer's outputs: no final norm, the last MLP writes 0."""
    from interp.testing import tiny_model

    m = tiny_model("llama", seed=1)
    m.hf.model.norm = torch.nn.Identity()
    with torch.no_grad():
        m.hf.model.layers[-1].mlp.down_proj.weight.zero_()
    return m


def test_atp_equals_patching_where_the_metric_is_linear(linear_top):
    m = linear_top
    task, top = _task(m), m.n_layers - 1
    atp = attribution_patching(m, task, sites=[f"resid_post.{top}", f"attn_z.{top}", f"attn_out.{top}",
                                               "resid_pre.0"], progress=False)
    sweep = patching_sweep(m, task, ["resid_post", "attn_z", "attn_out"], layers=[top], positions=[-1, -2],
                           progress=False)
    # logits = W_U · resid_post(top) and resid_post(top) is affine in each head's z: first order is exact
    for name in ("resid_post", "attn_out"):
        assert atp.grid(name, [-1, -2], [top])[0] == pytest.approx(sweep["effects"][name][0], abs=1e-4)
    assert atp.grid("attn_z", layers=[top])[0] == pytest.approx(sweep["effects"]["attn_z"][0], abs=1e-4)
    assert abs(sweep["effects"]["resid_post"][0][0] - 1) < 1e-4  # the whole effect sits at the last position
    assert max(abs(x) for x in sweep["effects"]["attn_z"][0]) > 0.05  # heads that matter, so equality means something
    # through the nonlinear lower layer the first-order term is only an estimate (not exact)
    exact = patching_sweep(m, task, ["resid_pre"], layers=[0], positions=[-1], progress=False)["effects"]["resid_pre"]
    assert atp.grid("resid_pre", [-1], [0])[0] != pytest.approx(exact[0], abs=1e-3)


def test_gradients_flow_through_each_head(tiny):
    """attn_out = W_O z (+ b): the per-head estimates add up to the attn_out estimate at every layer, and
    resid_post.l is resid_pre.l+1; both only hold when the per-head gradient is the real one."""
    from interp import arch

    task = _task(tiny)
    atp = attribution_patching(tiny, task, sites=["attn_z", "attn_out", "resid_post", "resid_pre"], progress=False)
    for layer in range(tiny.n_layers):
        z = atp[f"attn_z.{layer}"]
        assert z.shape[-1] == tiny.n_heads and z.abs().sum() > 0
        if not arch.layout(tiny).post_norms:  # gemma normalizes attn_out after W_O: not linear in z
            assert torch.allclose(z.sum(-1), atp[f"attn_out.{layer}"], atol=1e-5)
    for layer in range(tiny.n_layers - 1):
        assert torch.allclose(atp[f"resid_post.{layer}"], atp[f"resid_pre.{layer + 1}"], atol=1e-6)
    # the new sites: q/k/v per (KV) head, the embedding and the final norm, whose patch is exact (logits are
    # linear in it); attention patterns are read-only
    more = attribution_patching(tiny, task, sites=["attn_q.0", "attn_k.1", "embed", "ln_final"], progress=False)
    assert more["attn_q.0"].shape[-1] == tiny.n_heads and more["attn_k.1"].shape[-1] == tiny.site_shape("attn_k.1")[0]
    assert more["embed"].abs().sum() > 0
    from interp.experiments._patching import Pairs
    from interp.interventions import Patch

    pairs = Pairs(tiny, task)
    real = pairs.effect({"ln_final": Patch(pairs.cache(["ln_final"]), "ln_final", positions=[-1])}).mean().item()
    assert more.effect("ln_final", [-1]).item() == pytest.approx(real, abs=1e-4)
    assert more.to_dict([-1])["effects"]["ln_final"] == [[pytest.approx(real, abs=1e-4)]]
    with pytest.raises(InterpError, match="read-only"):
        attribution_patching(tiny, task, sites=["attn_pattern.0"], progress=False)
    # padding columns carry nothing; the weights are left untouched and trainable
    assert atp["resid_pre.0"][1, :-len(tiny.encode([CLEAN[1]], chat=False).ids[0])].abs().sum() == 0
    assert all(p.requires_grad and p.grad is None for p in tiny.hf.parameters())


def test_graddrop_and_errors(linear_top):
    m = linear_top
    task, top = _task(m), m.n_layers - 1
    plain = attribution_patching(m, task, sites=[f"resid_post.{top}", "resid_pre.0"], progress=False)
    gd = attribution_patching(m, task, sites=[f"resid_post.{top}", "resid_pre.0"], graddrop=True, progress=False)
    # nothing after the last block to drop: every l gives |AtP|, summed over L and divided by L - 1
    key = f"resid_post.{top}"
    assert torch.allclose(gd[key], plain[key].abs() * m.n_layers / (m.n_layers - 1), atol=1e-5)
    assert (gd["resid_pre.0"] >= 0).all() and gd.method == "atp+graddrop"
    with pytest.raises(InterpError, match="equal token lengths"):
        attribution_patching(m, ["a b c"], ["a b c d e f"], metric=lambda x: x[:, 0], progress=False)
    with pytest.raises(InterpError, match="one value per pair"):
        attribution_patching(m, CLEAN, CORRUPTED, metric=lambda x: x[:, 0].sum(), progress=False)
    with pytest.raises(InterpError, match="unknown site"):
        attribution_patching(m, task, sites=["resid_nope"], progress=False)
    assert spearman([1, 2, 3, 4], [10, 20, 40, 30]) == pytest.approx(0.8)


def test_compare_and_cli(tmp_path, capsys, monkeypatch):
    from interp import cli, testing

    m = testing.tiny_model("llama", seed=1)
    out = compare_with_patching(m, _task(m), ["resid_pre", "attn_z"], positions=[-1, -2], progress=False)
    assert set(out["spearman_vs_activation_patching"]) == {"resid_pre", "attn_z", "all"}
    assert out["speedup"] > 0 and out["forwards"]["activation_patching"] == 2 + m.n_layers * (2 + m.n_heads)
    assert len(out["attribution"]["effects"]["attn_z"][0]) == m.n_heads

    # the command on the IOI task, with the model loader pointed at a tiny model whose tokenizer has the names
    import interp.loading as loading

    monkeypatch.setattr(loading, "load_model", lambda name, **kw: m)
    monkeypatch.setattr("interp.commands.illusion.ioi_task", lambda model, n, seed, path: _task(model), raising=False)
    monkeypatch.setattr("interp.data.ioi.ioi_task", lambda model, n, seed, path: _task(model))
    assert cli.main(["patch", "tiny", "--method", "attribution", "--json", "--sites", "resid_pre", "mlp_out",
                     "--positions", "-1", "-2", "--out", str(tmp_path)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {"spearman_vs_activation_patching", "speedup", "attribution", "activation_patching"} <= set(report)
    assert (tmp_path / "report.json").exists()
    assert cli.main(["patch", "tiny", "--method", "attribution", "--sites", "resid_nope"]) != 0
    assert cli.main(["patch", "tiny"]) != 0  # the sweep still needs --out


@pytest.mark.slow
def test_smollm2_ioi_atp_tracks_activation_patching(smollm):
    """The issue's target at the residual stream: Spearman >= 0.7 against the real sweep on the same pairs.

    Speed is a benchmark, not a test (wall-time ratios move with the machine's load): measured idle on
    2 cores (2026-12-01, docs/tools.md), AtP 0.74-0.94 s against the stacked sweep's 8.4 s (9-11x) and the
    one-forward-per-patch sweep's 45-46 s (49-60x). Here only the work is checked: AtP is 2 forwards
    (+ 1 backward) against the sweep's 2 + 150 patched forwards.
    """
    from interp.data.ioi import ioi_task

    out = compare_with_patching(smollm, ioi_task(smollm, n=8, seed=0), ["resid_pre"], progress=False)
    rho = out["spearman_vs_activation_patching"]["resid_pre"]
    # measured (8 pairs, seed 0, 30 layers x positions -1..-5 = 150 cells): rho 0.967 (2026-11 and again
    # 2026-12-01 after the sweep was stacked); threshold: that less a 0.1 margin (same seed and pairs: only
    # float noise moves it)
    assert rho >= 0.85, rho
    assert out["forwards"] == {"attribution": 2, "activation_patching": 152}
