"""Patching and DAS on a packaged real model and the shipped IOI task (behaviour)."""
from pathlib import Path

import pytest

from interp.experiments.patching import ioi_task, patching_sweep

pytestmark = pytest.mark.slow
DATA = Path(__file__).resolve().parents[1] / "data" / "ioi_task.json"


@pytest.fixture(scope="module")
def task(smollm):
    return ioi_task(smollm, n=10)  # one pair per template


def test_ioi_task_is_aligned_and_solved(smollm, task):
    assert task.roles == {"END": -1, "S2": -5}
    for clean, corrupted in zip(task.clean, task.corrupted):
        a = smollm.tokenizer.encode(clean, add_special_tokens=False)
        b = smollm.tokenizer.encode(corrupted, add_special_tokens=False)
        # the pair differs in exactly one token: the second subject mention, 5th from the end
        assert [i - len(a) for i in range(len(a)) if a[i] != b[i]] == [-5]
    sweep = patching_sweep(smollm, task, ["resid_pre"], layers=[0, smollm.n_layers - 1], positions=[-1, -5],
                           progress=False)
    # the model names the indirect object: the clean answer wins on clean prompts, loses on corrupted ones
    assert sweep["clean_metric"] > 0 > sweep["corrupted_metric"]
    (end0, s2_0), (end_last, s2_last) = sweep["effects"]["resid_pre"]
    # at layer 0, S2 is the only place the runs differ, so patching it restores the clean run;
    # by the last layer the answer has moved to END
    assert s2_0 == pytest.approx(1.0, abs=1e-3) and abs(end0) < 1e-3
    assert end_last > 0.5 and abs(s2_last) < 0.2


def test_misaligned_template_is_an_error(smollm, tmp_path):
    import json

    from interp import InterpError

    spec = json.loads(DATA.read_text())
    spec["templates"] = ["When {A} and {B} got to the beach, {C} threw the frisbee to"]  # frisbee: 3 tokens
    path = tmp_path / "task.json"
    path.write_text(json.dumps(spec))
    with pytest.raises(InterpError, match="not at S2 = -5"):
        ioi_task(smollm, n=2, path=path)


def test_das_beats_random_directions_on_held_out_pairs(smollm):
    """The claim test: a DAS direction trained on training pairs moves HELD-OUT test pairs (templates and names
    it never saw, sites chosen on validation pairs) toward the clean answer far more than random unit directions
    at the same site do, in the residual stream and in the MLP hidden layer."""
    from interp.experiments.patching import Config, run

    # the sweep over resid_pre and attn_out alone makes every choice (mlp_out only draws the heatmap), so this
    # matches `interp patch smollm2-135m-instruct --pairs 24 --positions -1 --das-steps 20` on seed 0
    r = run(smollm, Config(pairs=24, positions=(-1,), sites=("resid_pre", "attn_out"), das_steps=20,
                           progress=False)).report
    assert r["protocol"]["selected_on"] == "validation" and r["protocol"]["split_unit"] == "template and name"
    resid, mlp = r["subspaces"]["resid"], r["subspaces"]["mlp"]
    gaps = {k: s["fraction_of_effect"]["das"] - max(s["random_effect"]) for k, s in (("resid", resid), ("mlp", mlp))}
    # measured 2026-11-30 on seed 0 (resid_pre.21, mlp_act.21, 6 test pairs): DAS 1.104 vs best random 0.001 in
    # the residual stream, 0.249 vs −0.001 in MLP21; thresholds keep a margin of 0.6 and 0.15 below those gaps
    # (seeds 1 and 2 measured gaps of 0.665 / 0.595 and 0.253 / 0.182, also above both thresholds)
    assert gaps["resid"] > 0.5 and gaps["mlp"] > 0.1, gaps
    assert resid["reader"].startswith("q.") and mlp["reader"] == "down projection"
