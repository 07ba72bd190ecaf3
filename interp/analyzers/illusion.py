"""Checks that expose the subspace-patching illusion (Makelov, Lange, Nanda 2023).

A 1-D subspace patch moves the base activation w toward the source u along a
unit vector v: w' = w + v vᵀ(u − w). It can change behaviour through a
*dormant* direction (one that barely varies on real inputs but is read
downstream) fed by a *disconnected* one (varies with the input, read by
nothing). Given the matrix that reads the site (the MLP down projection for
an MLP-hidden site, or a read-out the user names for a residual site), the
checks split v into its rowspace part (what the reader can see) and its
nullspace part, re-patch along each part's unit vector alone (as the paper
and its official code do), measure how much each varies on real inputs, and
compare with patching the whole component.

- ``IllusionSplit``: the model-free half as a scikit-learn transformer: fit on
  real-input activations, it splits the direction against the reader and
  measures each part's spread; ``transform`` gives the projections.
- ``illusion_checks``: the split plus the patching effects (a callable you
  pass, e.g. from ``interp.experiments.patching``) and a verdict.
- ``ToyIllusion``: the paper's three-unit toy model.

Example:
    >>> model = ToyIllusion()
    >>> report = model.checks()
    >>> report.verdict.startswith("illusory")
    True
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted, validate_data

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


def _tensor(x, what: str) -> torch.Tensor:
    """float64 torch view of numpy/torch input (torch kept as is, so the float64 arithmetic matches)."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().double()
    try:
        return torch.as_tensor(np.asarray(x, dtype=np.float64))
    except (TypeError, ValueError):
        raise InterpError(f"{what} must be numeric (a numpy array or torch tensor)") from None


def _validated(est, X, **kw) -> np.ndarray:
    """sklearn's input checks (finite, 2-D, feature count), failing with an InterpError (a ValueError)."""
    if isinstance(X, torch.Tensor):  # checked as float64 numpy, computed on the same values
        X = X.detach().cpu().double().numpy()
    try:
        return validate_data(est, X, dtype=np.float64, **kw)
    except InterpError:
        raise
    except ValueError as e:
        raise InterpError(f"{type(est).__name__}: {e}") from None


class IllusionSplit(TransformerMixin, BaseEstimator):
    """Split a patch direction against the matrix that reads its site, and measure each part on real inputs.

    Parameters:
        direction: the patched direction [d] (normalized in ``fit``). None: the
            difference of class means of ``X`` under labels ``y`` (mean of the
            second class in sorted order minus the first), the mean-difference
            direction the paper compares with; with more than two classes, the
            axis along which the class means spread most.
        reader: the matrix [out, d] that reads the site (an MLP down projection,
            some heads' query rows). None: the identity, so nothing is in the
            nullspace.
        rtol: singular values of the reader below ``rtol`` × the largest count as zero.

    Fitted: ``direction_`` (unit, [d]), ``rowspace_`` and ``nullspace_`` (the
    raw parts, summing to ``direction_``; the checks patch along their unit vectors), ``norms_``
    ({"rowspace", "nullspace"}), ``variation_`` (std over ``X`` of the
    projection on the unit direction and on each part's unit vector:
    {"direction", "rowspace", "nullspace"}; a part that barely varies is
    dormant), ``mean_``, ``n_features_in_``; ``classes_`` when fitted from
    labels. ``transform(X)`` returns those three projections of ``X − mean_``
    as [n, 3] (0 for a part of norm ~0).

    Example:
        >>> import numpy as np
        >>> X = np.c_[np.random.default_rng(0).normal(size=50), np.zeros(50)]
        >>> split = IllusionSplit(direction=np.ones(2), reader=np.array([[0.0, 1.0]])).fit(X)
        >>> split.variation_["rowspace"], split.variation_["nullspace"] > 0.5
        (0.0, True)
    """

    def __init__(self, direction=None, reader=None, rtol: float = 1e-6):
        self.direction = direction
        self.reader = reader
        self.rtol = rtol

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = self.direction is None
        return tags

    def fit(self, X, y=None) -> "IllusionSplit":
        X = _validated(self, X, reset=True, ensure_min_samples=2)
        acts = torch.tensor(X)  # a copy: X may be a read-only memmap
        if self.direction is None:
            v = self._mean_difference(acts, y)
        else:
            v = _tensor(self.direction, "the direction").flatten()
        if v.numel() != acts.shape[1]:
            raise InterpError(f"the direction has {v.numel()} entries, the activations {acts.shape[1]} features")
        if v.norm() < 1e-12 or not torch.isfinite(v).all():
            raise InterpError("the direction is zero or not finite")
        v = v / v.norm()
        reader = (torch.eye(v.numel(), dtype=torch.float64) if self.reader is None
                  else _tensor(self.reader, "the reader"))
        row, null = split_by_reader(v, reader, self.rtol)
        self.mean_ = acts.mean(0)
        self._units = [v] + [p / p.norm() if p.norm() > 1e-8 else p for p in (row, null)]
        centered = acts - self.mean_
        self.variation_ = {name: float((centered @ u).std()) if u.norm() > 1e-8 else 0.0
                           for name, u in zip(("direction", "rowspace", "nullspace"), self._units)}
        self.norms_ = {"rowspace": float(row.norm()), "nullspace": float(null.norm())}
        self.direction_, self.rowspace_, self.nullspace_ = v.numpy(), row.numpy(), null.numpy()
        self.mean_ = self.mean_.numpy()
        return self

    def _mean_difference(self, acts: torch.Tensor, y) -> torch.Tensor:
        if y is None:
            raise InterpError("IllusionSplit without direction= requires y to be passed, but the target y is None; "
                              "give class labels (the mean-difference direction) or a direction")
        y = np.asarray(y)
        if y.shape[0] != acts.shape[0]:
            raise InterpError(f"y has {y.shape[0]} labels for {acts.shape[0]} rows of X")
        self.classes_ = np.unique(y)
        if len(self.classes_) < 2:
            raise InterpError("the mean-difference direction needs at least two classes in y")
        means = torch.stack([acts[torch.from_numpy(np.asarray(y == c))].mean(0) for c in self.classes_])
        if len(self.classes_) == 2:
            return means[1] - means[0]
        # more classes: the axis along which the class means spread most
        return torch.linalg.svd(means - means.mean(0), full_matrices=False)[2][0]

    def transform(self, X) -> np.ndarray:
        check_is_fitted(self)
        X = _validated(self, X, reset=False)
        units = np.stack([u.numpy() for u in self._units], 1)
        return (X - self.mean_) @ units


@dataclass
class IllusionReport:
    """What the checks found for one subspace patch.

    ``fraction_of_effect`` is interp's normalized effect (0 = base run, 1 =
    source run); ``fldd`` the paper's fractional logit-difference decrease in
    percent (its own scale: 100 = the base's logit difference erased, above
    100 = flipped), when the effect callable gives it. Rowspace and nullspace
    parts are patched along their unit vectors, as the paper and its code do;
    ``unnormalized`` keeps the older patch along the raw parts (which moves
    the activation by |part|² of the paper's patch) for comparison.
    """

    fraction_of_effect: dict  # {"full", "das" (the direction itself), "rowspace", "nullspace"}
    variation: dict  # std of the projection on real inputs: {"direction", "rowspace", "nullspace"}
    norms: dict  # |v_row|, |v_null|
    verdict: str
    fldd: dict | None = None  # the paper's FLDD (%) of the same four patches, when measured
    unnormalized: dict | None = None  # raw-part patches: {"rowspace", "nullspace", "verdict"}

    def to_dict(self) -> dict:
        return asdict(self)


def _measure(effect: Callable, p: torch.Tensor | None) -> tuple[float, float | None]:
    out = effect(p)
    return (float(out[0]), None if out[1] is None else float(out[1])) if isinstance(out, tuple) else (float(out), None)


def _verdict(frac: dict, variation: dict, faithful_share: float) -> str:
    share = frac["rowspace"] / frac["das"] if abs(frac["das"]) > 1e-9 else float("nan")
    numbers = (f"direction {frac['das']:.3f} of the effect, rowspace part alone {frac['rowspace']:.3f}, nullspace "
               f"part alone {frac['nullspace']:.3f}, full component {frac['full']:.3f}; projection std on real "
               f"inputs: rowspace {variation['rowspace']:.3g}, nullspace {variation['nullspace']:.3g}")
    if share == share and share >= faithful_share:
        return f"faithful: the part the reader sees keeps {share:.0%} of the effect ({numbers})"
    why = ("most of its variation lies in the nullspace (disconnected) while the rowspace part barely varies "
           "(dormant)" if variation["nullspace"] > variation["rowspace"] else
           "the rowspace part alone does not reproduce the effect")
    return f"illusory: {why} ({numbers})"


def illusion_checks(effect: Callable[[torch.Tensor | None], float | tuple], v: torch.Tensor, reader: torch.Tensor,
                    activations: torch.Tensor, faithful_share: float = 0.5) -> IllusionReport:
    """Run the checks for direction ``v``.

    ``effect(p)`` returns the patching effect (e.g. the fraction of the
    clean-vs-corrupted metric gap recovered) of the patch w' = w + p pᵀ(u − w)
    along a vector ``p``, or of the full-component patch when given None; it
    may return ``(effect, fldd)`` to add the paper's metric. ``p`` is the unit
    direction v, or the unit vector of its rowspace or nullspace part
    (v_row/|v_row|, v_null/|v_null|: the paper's patch, and its code's, which
    divides by |p|²); the raw parts are patched too, for the ``unnormalized``
    comparison only. ``activations`` [n, d] are real-input activations at the
    site, for the variation check. The subspace looks faithful when the
    rowspace part alone keeps at least ``faithful_share`` of the direction's
    effect.
    """
    v = _tensor(v, "the direction").flatten()
    activations = _tensor(activations, "the activations")
    if v.norm() < 1e-12 or not torch.isfinite(v).all():
        raise InterpError("the direction is zero or not finite")
    if activations.dim() != 2 or activations.shape[1] != v.numel():
        raise InterpError(f"activations must be [n, {v.numel()}], got {tuple(activations.shape)}")
    split = IllusionSplit(direction=v, reader=reader).fit(activations)
    v, row, null = (torch.from_numpy(a) for a in (split.direction_, split.rowspace_, split.nullspace_))
    measured = {"full": _measure(effect, None), "das": _measure(effect, v)}
    raw = {}
    for name, part in (("rowspace", row), ("nullspace", null)):
        if part.norm() > 1e-8:
            measured[name] = _measure(effect, part / part.norm())
            raw[name] = _measure(effect, part)[0]
        else:  # nothing of v lies there: no patch
            measured[name], raw[name] = (0.0, 0.0), 0.0
    frac = {k: m[0] for k, m in measured.items()}
    fldd = {k: m[1] for k, m in measured.items()} if measured["das"][1] is not None else None
    variation = split.variation_
    raw_frac = dict(frac, **raw)
    unnormalized = dict(raw, verdict=_verdict(raw_frac, variation, faithful_share))
    return IllusionReport(frac, variation, split.norms_, _verdict(frac, variation, faithful_share), fldd,
                          unnormalized)


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

