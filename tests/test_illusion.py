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
    assert out["verdict"].startswith("illusory")
