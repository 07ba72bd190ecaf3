"""Checks that expose the subspace-patching illusion (Makelov, Lange, Nanda 2023).

A 1-D subspace patch moves the base activation w toward the source u along a
unit vector v: w' = w + v vᵀ(u − w). It can change behaviour through a
*dormant* direction (one that barely varies on real inputs but is read
downstream) fed by a *disconnected* one (varies with the input, read by
nothing). Given the matrix that reads the site (the MLP down projection for
an MLP-hidden site, or a read-out the user names for a residual site), the
checks split v into its rowspace part (what the reader can see) and its
nullspace part, re-patch along each alone, measure how much each varies on
real inputs, and compare with patching the whole component.

Example:
    >>> model = ToyIllusion()
    >>> report = model.checks()
    >>> report.verdict.startswith("illusory")
    True
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import torch

from ..errors import InterpError


def split_by_reader(v: torch.Tensor, reader: torch.Tensor, rtol: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """(v_row, v_null): v's parts in the rowspace and nullspace of ``reader`` [out, d] (reader @ v_null = 0)."""
    if reader.dim() != 2 or reader.shape[1] != v.shape[-1]:
        raise InterpError(f"the reader must be [out, {v.shape[-1]}] to read a direction of size {v.shape[-1]}, "
                          f"got {tuple(reader.shape)}")
    _, s, vh = torch.linalg.svd(reader.double(), full_matrices=False)
    basis = vh[s > rtol * s.max()]  # orthonormal basis of the rowspace
    v = v.double()
    row = basis.T @ (basis @ v)
    return row, v - row


@dataclass
class IllusionReport:
    """What the checks found for one subspace patch."""

    fraction_of_effect: dict  # {"full", "das" (the direction itself), "rowspace", "nullspace"}
    variation: dict  # std of the projection on real inputs: {"direction", "rowspace", "nullspace"}
    norms: dict  # |v_row|, |v_null|
    verdict: str

    def to_dict(self) -> dict:
        return asdict(self)


def illusion_checks(effect: Callable[[torch.Tensor | None], float], v: torch.Tensor, reader: torch.Tensor,
                    activations: torch.Tensor, faithful_share: float = 0.5) -> IllusionReport:
    """Run the checks for direction ``v``.

    ``effect(p)`` returns the patching effect (e.g. the fraction of the
    clean-vs-corrupted metric gap recovered) of the patch w' = w + p pᵀ(u − w)
    along a vector ``p`` (the unit direction v, or its rowspace or nullspace
    part as they are, not renormalized, as in the paper), or of the
    full-component patch when given None.
    ``activations`` [n, d] are real-input activations at the site, for the
    variation check. The subspace looks faithful when the rowspace part alone
    keeps at least ``faithful_share`` of the direction's effect.
    """
    v = v.double().flatten()
    if v.norm() < 1e-12 or not torch.isfinite(v).all():
        raise InterpError("the direction is zero or not finite")
    if activations.dim() != 2 or activations.shape[1] != v.numel():
        raise InterpError(f"activations must be [n, {v.numel()}], got {tuple(activations.shape)}")
    v = v / v.norm()
    row, null = split_by_reader(v, reader)
    frac = {"full": float(effect(None)), "das": float(effect(v))}
    for name, part in (("rowspace", row), ("nullspace", null)):
        frac[name] = float(effect(part)) if part.norm() > 1e-8 else 0.0
    acts = activations.double()
    acts = acts - acts.mean(0)

    def spread(u):
        return float((acts @ u).std()) if u.norm() > 1e-8 else 0.0

    variation = {"direction": spread(v), "rowspace": spread(row / row.norm() if row.norm() > 1e-8 else row),
                 "nullspace": spread(null / null.norm() if null.norm() > 1e-8 else null)}
    share = frac["rowspace"] / frac["das"] if abs(frac["das"]) > 1e-9 else float("nan")
    numbers = (f"direction {frac['das']:.3f} of the effect, rowspace part alone {frac['rowspace']:.3f}, nullspace "
               f"part alone {frac['nullspace']:.3f}, full component {frac['full']:.3f}; projection std on real "
               f"inputs: rowspace {variation['rowspace']:.3g}, nullspace {variation['nullspace']:.3g}")
    if share == share and share >= faithful_share:
        verdict = f"faithful: the part the reader sees keeps {share:.0%} of the effect ({numbers})"
    else:
        why = ("most of its variation lies in the nullspace (disconnected) while the rowspace part barely varies "
               "(dormant)" if variation["nullspace"] > variation["rowspace"] else
               "the rowspace part alone does not reproduce the effect")
        verdict = f"illusory: {why} ({numbers})"
    return IllusionReport(frac, variation, {"rowspace": float(row.norm()), "nullspace": float(null.norm())}, verdict)


class ToyIllusion:
    """The paper's toy: three hidden units h = (h1, h2, h3) from a scalar input x.

    h1 = x is *disconnected* (the output ignores it), h2 = 0 is *dormant*
    (constant on every input, but the output reads it with weight 2), h3 = x
    is *faithful*; the output reads y = 2·h2 + h3 through W_out = [[0, 2, 0],
    [0, 0, 1]] (summed), so its rowspace is span(e2, e3). Patching along
    (e1 + e2)/√2 moves y exactly as patching h3 does, yet it is an illusion:
    the patch's coefficient comes from h1, which nothing reads, and its
    effect goes through h2, which never varies.
    """

    w_out = torch.tensor([[0.0, 2.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        x = x.double().flatten()
        return torch.stack([x, torch.zeros_like(x), x], dim=1)

    def output(self, h: torch.Tensor) -> torch.Tensor:
        return (h @ self.w_out.T).sum(-1)

    def patch_effect(self, direction: torch.Tensor | None, base: float = 0.0, source: float = 1.0,
                     faithful_unit: int = 2) -> float:
        """Change in y from patching base→source along ``direction`` (None: the whole hidden layer),
        as a fraction of patching the faithful unit alone."""
        hw, hu = self.hidden(torch.tensor([base])), self.hidden(torch.tensor([source]))
        e = torch.zeros(3, dtype=torch.float64)
        e[faithful_unit] = 1
        ref = self.output(hw + ((hu - hw) @ e)[:, None] * e)[0] - self.output(hw)[0]
        if direction is None:
            patched = hu
        else:
            p = direction.double()
            patched = hw + ((hu - hw) @ p)[:, None] * p
        return float((self.output(patched)[0] - self.output(hw)[0]) / ref)

    def checks(self, v: torch.Tensor | None = None, n: int = 200, seed: int = 0) -> IllusionReport:
        v = torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64) / 2 ** 0.5 if v is None else v
        xs = torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        return illusion_checks(self.patch_effect, v, self.w_out, self.hidden(xs))
