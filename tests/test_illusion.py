"""The subspace-patching illusion checks, on the paper's three-unit toy model."""
import json

import pytest
import torch

from interp import InterpError
from interp.analyzers.illusion import ToyIllusion, illusion_checks, split_by_reader


def test_toy_illusion_reproduces_effect_and_is_flagged():
    toy = ToyIllusion()
    v = torch.tensor([1.0, 1.0, 0.0]) / 2 ** 0.5
    assert toy.patch_effect(v) == pytest.approx(1.0)  # the same effect as patching the faithful unit
    report = toy.checks(v)
    assert report.fraction_of_effect["das"] == pytest.approx(1.0)
    assert report.fraction_of_effect["rowspace"] == pytest.approx(0.0, abs=1e-12)
    assert report.fraction_of_effect["nullspace"] == pytest.approx(0.0, abs=1e-12)
    assert report.variation["rowspace"] == pytest.approx(0.0, abs=1e-12)  # dormant
    assert report.variation["nullspace"] > 0.5  # disconnected but varying
    assert report.verdict.startswith("illusory")


def test_faithful_unit_passes():
    report = ToyIllusion().checks(torch.tensor([0.0, 0.0, 1.0]))
    assert report.verdict.startswith("faithful")
    assert report.fraction_of_effect["rowspace"] == pytest.approx(1.0)


def test_parts_are_patched_along_unit_vectors():
    """v = (2·h1 + h3)/√5: a faithful unit plus a disconnected one. The paper patches v's rowspace part along its
    unit vector (h3), which keeps all of the effect; the raw part (h3/√5) moves the activation by 1/5 of that patch,
    which made the earlier checks call the direction illusory."""
    toy = ToyIllusion()
    given = []

    def effect(p):
        given.append(None if p is None else p.clone())
        return toy.patch_effect(p)

    v = torch.tensor([2.0, 0.0, 1.0]) / 5 ** 0.5
    xs = toy.hidden(torch.randn(100, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    report = illusion_checks(effect, v, toy.w_out, xs)
    assert report.fraction_of_effect["das"] == pytest.approx(0.6)
    assert report.fraction_of_effect["rowspace"] == pytest.approx(1.0)  # along h3: the faithful unit's patch
    assert report.unnormalized["rowspace"] == pytest.approx(0.2)  # |v_row|² = 1/5 of it
    assert report.verdict.startswith("faithful") and report.unnormalized["verdict"].startswith("illusory")
    norms = sorted(float(p.norm()) for p in given if p is not None)
    # v and both unit parts (norm 1); the raw parts for the comparison (|v_row| = 1/√5, |v_null| = 2/√5)
    assert norms == pytest.approx([1 / 5 ** 0.5, 2 / 5 ** 0.5, 1.0, 1.0, 1.0])
    assert report.fldd is None  # the toy's effect gives no FLDD


def test_fldd_is_passed_through_on_its_own_scale():
    toy = ToyIllusion()
    xs = toy.hidden(torch.randn(50, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    report = illusion_checks(lambda p: (toy.patch_effect(p), 200 * toy.patch_effect(p)), torch.tensor([0.0, 0, 1]),
                             toy.w_out, xs)
    assert report.fldd == {"full": 200.0, "das": 200.0, "rowspace": 200.0, "nullspace": 0.0}
    assert report.fraction_of_effect["das"] == 1.0


def test_split_by_reader():
    reader = torch.randn(3, 7)
    v = torch.randn(7)
    row, null = split_by_reader(v, reader)
    torch.testing.assert_close(row + null, v.double())
    assert (reader.double() @ null).abs().max() < 1e-10
    assert abs(float(row @ null)) < 1e-10
    with pytest.raises(InterpError, match="reader"):
        split_by_reader(torch.randn(5), reader)


def test_bad_inputs():
    toy = ToyIllusion()
    with pytest.raises(InterpError, match="zero"):
        illusion_checks(toy.patch_effect, torch.zeros(3), toy.w_out, torch.randn(10, 3))
    with pytest.raises(InterpError, match="activations"):
        illusion_checks(toy.patch_effect, torch.ones(3), toy.w_out, torch.randn(10, 4))


def test_cli_toy_json(capsys):
    from interp.cli import main

    assert main(["illusion", "--toy", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["fraction_of_effect"]) == {"full", "das", "rowspace", "nullspace"}
    assert out["verdict"].startswith("illusory") and out["unnormalized"]["verdict"].startswith("illusory")


# --- scikit-learn contract of IllusionSplit -------------------------------------------------------------------
# Every check of check_estimator applies to the default IllusionSplit() (direction from the labels, identity
# reader), so none is skipped for it. With a fixed direction= the estimator only fits data of that width, which
# the generated check data (2 to 10 features) does not have; test_split_with_a_given_direction covers that mode.
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

from interp.analyzers.illusion import IllusionSplit  # noqa: E402


@parametrize_with_checks([IllusionSplit()])
def test_sklearn_check_estimator(estimator, check):
    check(estimator)


def test_clone_params_pipeline_and_cross_val():
    import numpy as np
    from sklearn.base import clone
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline

    est = IllusionSplit(reader=np.eye(4)[:2], rtol=1e-5)
    twin = clone(est)
    assert twin.get_params()["rtol"] == 1e-5 and np.array_equal(twin.reader, est.reader)
    assert twin.set_params(rtol=1e-3).rtol == 1e-3 and est.rtol == 1e-5
    rng = np.random.default_rng(0)
    y = np.array(["clean", "corrupted"] * 20)  # string labels work
    X = rng.normal(size=(40, 4)) + (y == "clean")[:, None] * np.array([2.0, 0, 2.0, 0])
    scores = cross_val_score(make_pipeline(IllusionSplit(), LogisticRegression()), X, y, cv=4)
    assert scores.mean() > 0.8
    est.fit(X, y)
    assert list(est.classes_) == ["clean", "corrupted"]
    np.testing.assert_allclose(est.direction_, [-0.7071, 0, -0.7071, 0], atol=0.25)  # corrupted minus clean
    np.testing.assert_allclose(est.rowspace_ + est.nullspace_, est.direction_)
    assert isinstance(est.transform(torch.as_tensor(X)), np.ndarray) and est.transform(X).shape == (40, 3)


def test_split_with_a_given_direction():
    import numpy as np

    toy = ToyIllusion()
    h = toy.hidden(torch.randn(100, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    split = IllusionSplit(direction=torch.tensor([1.0, 1.0, 0.0]), reader=toy.w_out).fit(h)
    assert split.variation_["rowspace"] == pytest.approx(0.0, abs=1e-12)  # e2: dormant
    assert split.variation_["nullspace"] > 0.5  # e1: disconnected
    np.testing.assert_allclose(split.rowspace_, [0, 0.7071, 0], atol=1e-4)
    with pytest.raises(InterpError, match="direction has 3 entries"):
        split.fit(np.ones((5, 4)))
    with pytest.raises(InterpError, match="requires y"):
        IllusionSplit().fit(h)
    with pytest.raises(InterpError, match="2 features"):
        IllusionSplit(direction=[1.0, 0.0]).fit(np.ones((5, 2))).transform(np.ones((5, 3)))
