"""Patching and DAS on a packaged real model and the shipped IOI task (behaviour)."""
from pathlib import Path

import pytest
import torch

from interp.experiments.patching import direction_effect, ioi_task, patching_sweep

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


def test_das_beats_random_direction_on_held_out_pairs(smollm):
    from interp.experiments.patching import Config, run

    task = ioi_task(smollm, n=16, seed=1)
    r = run(smollm, Config(positions=(-1,), das_steps=20, progress=False), task=task).report
    resid = r["subspaces"]["resid"]
    site = resid["site"]
    # DAS trained on 8 pairs, scored on the other 8; compare with random unit directions at the same site
    g = torch.Generator().manual_seed(0)
    rand = [direction_effect(smollm, task, site, (x := torch.randn(smollm.d_model, generator=g)) / x.norm())
            for _ in range(3)]
    das = resid["fraction_of_effect"]["das"]
    assert das > 0.3 and das > max(rand) + 0.2, (site, das, rand)
    assert resid["reader"].startswith("q.") and r["subspaces"]["mlp"]["reader"] == "down projection"
