"""Interventions: small composable edits of a site's activations.

Each intervention maps ``x`` ([batch, seq, d], or [batch, seq, heads,
d_head] for ``attn_z``) to its edited value, given a ``Context`` that says
which token each row/column is. ``positions`` limits where it acts:
``"all"``, ``"prompt"``, ``"generated"``, or a list of prompt token indices
(negative from the end of the prompt). Apply them with ``model.intervene``:

    with model.intervene({"resid_pre.12": Ablate(direction), "mlp_out.3": Add(v, scale=4.0)}):
        model.generate(["Hello"])

Example:
    >>> import torch
    >>> x = torch.tensor([[[3.0, 4.0]]])
    >>> Ablate(torch.tensor([1.0, 0.0])).apply(x, Context.whole(x))
    tensor([[[0., 4.]]])
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence, Union

import torch

from .errors import InterpError

PositionLimit = Union[str, Sequence[int]]


@dataclass
class Context:
    """Where the current forward's tokens sit.

    ``token_index`` [batch, seq]: index of each column in its prompt's own
    tokens (prompt tokens first, then generated ones); ``valid`` [batch, seq]:
    False on padding; ``is_prompt`` [seq]: True for prompt tokens;
    ``prompt_lengths`` [batch]: tokens in each prompt.
    """

    token_index: torch.Tensor
    valid: torch.Tensor
    is_prompt: torch.Tensor
    prompt_lengths: torch.Tensor

    @classmethod
    def whole(cls, x: torch.Tensor) -> "Context":
        """Every column a prompt token, no padding (for direct calls and tests)."""
        b, s = x.shape[:2]
        idx = torch.arange(s, device=x.device).expand(b, s)
        return cls(idx, torch.ones(b, s, dtype=torch.bool, device=x.device),
                   torch.ones(s, dtype=torch.bool, device=x.device), torch.full((b,), s, device=x.device))


def _unit_check(v: torch.Tensor, what: str) -> torch.Tensor:
    if not isinstance(v, torch.Tensor):
        v = torch.as_tensor(v)
    if not torch.is_floating_point(v):
        raise InterpError(f"{what} must be a floating-point tensor, got dtype {v.dtype}")
    if not torch.isfinite(v).all():
        raise InterpError(f"{what} contains NaN or infinite values")
    return v


class Intervention:
    """Base class: subclasses implement ``edit(x, ctx)``; ``apply`` adds the position limit."""

    def __init__(self, positions: PositionLimit = "all"):
        if isinstance(positions, str) and positions not in ("all", "prompt", "generated"):
            raise InterpError(f"positions must be 'all', 'prompt', 'generated' or a list of prompt token indices, "
                              f"got {positions!r}")
        self.positions = positions

    def check(self, shape: tuple[int, ...], site: str) -> None:
        """Validate against the site's trailing shape (called when attached)."""

    def edit(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        raise NotImplementedError

    def where(self, ctx: Context) -> torch.Tensor:
        """Boolean [batch, seq]: where this intervention acts."""
        mask = ctx.valid.clone()
        if self.positions == "prompt":
            mask &= ctx.is_prompt[None]
        elif self.positions == "generated":
            mask &= ~ctx.is_prompt[None]
        elif not isinstance(self.positions, str):
            chosen = torch.zeros_like(mask)
            for p in self.positions:
                p = int(p)
                target = torch.where(torch.tensor(p < 0, device=mask.device), ctx.prompt_lengths + p,
                                     torch.full_like(ctx.prompt_lengths, p))
                if ((target < 0) | (target >= ctx.prompt_lengths)).any():
                    raise InterpError(f"position {p} is out of range for a prompt of "
                                      f"{int(ctx.prompt_lengths.min())} tokens")
                chosen |= ctx.token_index == target[:, None]
            mask &= chosen & ctx.is_prompt[None]
        return mask

    def apply(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        mask = self.where(ctx)
        if not mask.any():
            return x
        edited = self.edit(x, ctx)
        m = mask.reshape(mask.shape + (1,) * (x.dim() - 2))
        return torch.where(m, edited, x)

    def __add__(self, other: "Intervention") -> "Compose":
        return Compose([self, other])


class Ablate(Intervention):
    """Project out a direction or an orthonormal basis: x ← x − Q Qᵀ x.

    ``directions`` is [d] or [k, d]; a basis must be orthonormal unless
    ``orthonormalize=True`` (then it is replaced by an orthonormal basis of
    its span, via QR).
    """

    def __init__(self, directions: torch.Tensor, orthonormalize: bool = False, positions: PositionLimit = "all"):
        super().__init__(positions)
        q = _unit_check(directions, "the direction").detach().float()
        q = q[None] if q.dim() == 1 else q
        if q.dim() != 2:
            raise InterpError(f"directions must be [d] or [k, d], got shape {tuple(q.shape)}")
        norms = q.norm(dim=-1)
        if (norms < 1e-8).any():
            raise InterpError("a direction to ablate is zero; it has no direction to remove")
        if q.shape[0] == 1:
            q = q / norms[:, None]
        elif orthonormalize:
            q = torch.linalg.qr(q.T.double()).Q.T.float()
        else:
            gram = q.double() @ q.double().T
            if not torch.allclose(gram, torch.eye(q.shape[0], dtype=torch.float64), atol=1e-4):
                raise InterpError("the basis is not orthonormal (Q Qᵀ ≠ I); pass orthonormalize=True to use an "
                                  "orthonormal basis of its span")
        self.basis = q

    def check(self, shape, site):
        if self.basis.shape[-1] != shape[-1]:
            raise InterpError(f"direction size {self.basis.shape[-1]} does not match site {site} of size {shape[-1]}")

    def edit(self, x, ctx):
        q = self.basis.to(x.device, x.dtype)
        return x - (x @ q.T) @ q


class Add(Intervention):
    """Activation addition: x ← x + scale·v."""

    def __init__(self, vector: torch.Tensor, scale: float = 1.0, positions: PositionLimit = "all"):
        super().__init__(positions)
        self.vector = _unit_check(vector, "the vector").detach().float()
        self.scale = float(scale)

    def check(self, shape, site):
        if self.vector.shape[-1] != shape[-1] or self.vector.dim() != 1:
            raise InterpError(f"vector of shape {tuple(self.vector.shape)} does not match site {site} of size "
                              f"{shape[-1]}")

    def edit(self, x, ctx):
        return x + self.scale * self.vector.to(x.device, x.dtype)


class Zero(Intervention):
    """x ← 0."""

    def edit(self, x, ctx):
        return torch.zeros_like(x)


class MeanAblate(Intervention):
    """x ← mean (a [d] vector, e.g. the site's mean over a reference set)."""

    def __init__(self, mean: torch.Tensor, positions: PositionLimit = "all"):
        super().__init__(positions)
        self.mean = _unit_check(mean, "the mean").detach().float()

    def check(self, shape, site):
        if tuple(self.mean.shape) != tuple(shape[-self.mean.dim():]):
            raise InterpError(f"mean of shape {tuple(self.mean.shape)} does not match site {site} {shape}")

    def edit(self, x, ctx):
        return self.mean.to(x.device, x.dtype).expand_as(x)


def _source_tensor(source, site: str | None = None) -> tuple[torch.Tensor, torch.Tensor | None, dict]:
    """A [batch, tokens, ...] tensor (plus mask) from a tensor or an ``Activations`` captured at all positions."""
    from .activations import Activations

    if isinstance(source, Activations):
        if site is None:
            raise InterpError("patching from Activations needs a site")
        return source[site], source.mask, source.metadata
    return _unit_check(source, "the source activations"), None, {}


class Patch(Intervention):
    """Replace activations with those of another run, aligned by prompt token index.

    ``source`` is a [batch, tokens, ...] tensor or ``Activations`` captured
    with ``positions="all"`` (then ``site`` names which one). Prompts of the
    current run must have exactly the source's token counts.
    """

    def __init__(self, source, site: str | None = None, positions: PositionLimit = "prompt"):
        super().__init__(positions)
        self.source, self.source_mask, self.meta = _source_tensor(source, site)

    def check(self, shape, site):
        if tuple(self.source.shape[2:]) != tuple(shape):
            raise InterpError(f"patch source has trailing shape {tuple(self.source.shape[2:])}, site {site} has "
                              f"{tuple(shape)}")

    def _gather(self, x, ctx):
        src = self.source.to(x.device, x.dtype)
        if src.shape[0] != x.shape[0]:
            raise InterpError(f"patch source has {src.shape[0]} prompts, this run has {x.shape[0]}")
        lengths = self.source_mask.sum(1) if self.source_mask is not None else \
            torch.full((src.shape[0],), src.shape[1])
        if not torch.equal(lengths.to(ctx.prompt_lengths.device), ctx.prompt_lengths.to(lengths.dtype)):
            raise InterpError(f"patch source prompts have {lengths.tolist()} tokens, this run's prompts have "
                              f"{ctx.prompt_lengths.tolist()}; patching needs equal token lengths")
        idx = ctx.token_index.clamp(0, src.shape[1] - 1)
        batch = torch.arange(x.shape[0], device=x.device)[:, None]
        return src[batch, idx]

    def where(self, ctx):
        return super().where(ctx) & ctx.is_prompt[None]

    def edit(self, x, ctx):
        return self._gather(x, ctx)


class SubspacePatch(Patch):
    """Patch only within span(Q): w ← w + Q Qᵀ (u − w), u the source activation."""

    def __init__(self, basis: torch.Tensor, source, site: str | None = None, positions: PositionLimit = "prompt",
                 orthonormalize: bool = False):
        super().__init__(source, site, positions)
        self.basis = Ablate(basis, orthonormalize=orthonormalize).basis

    def check(self, shape, site):
        super().check(shape, site)
        if self.basis.shape[-1] != shape[-1]:
            raise InterpError(f"basis size {self.basis.shape[-1]} does not match site {site} of size {shape[-1]}")

    def edit(self, x, ctx):
        u = self._gather(x, ctx)
        q = self.basis.to(x.device, x.dtype)
        return x + ((u - x) @ q.T) @ q


class Lambda(Intervention):
    """A user function ``fn(x, ctx) -> x'`` (shape kept)."""

    def __init__(self, fn: Callable[[torch.Tensor, Context], torch.Tensor], positions: PositionLimit = "all"):
        super().__init__(positions)
        self.fn = fn

    def edit(self, x, ctx):
        y = self.fn(x, ctx)
        if not isinstance(y, torch.Tensor) or y.shape != x.shape:
            raise InterpError(f"the intervention function must return a tensor of shape {tuple(x.shape)}")
        return y


class Compose(Intervention):
    """Several interventions at one site, applied in order."""

    def __init__(self, parts: Sequence[Intervention]):
        super().__init__("all")
        self.parts = [q for p in parts for q in (p.parts if isinstance(p, Compose) else [p])]

    def check(self, shape, site):
        for p in self.parts:
            p.check(shape, site)

    def apply(self, x, ctx):
        for p in self.parts:
            x = p.apply(x, ctx)
        return x


def everywhere(model, direction: torch.Tensor, positions: PositionLimit = "all") -> dict:
    """Directional ablation as in the refusal paper: block input, attention and MLP output, every layer."""
    ablate = Ablate(direction, positions=positions)
    return {f"{name}.{layer}": ablate for layer in range(model.n_layers) for name in ("resid_pre", "attn_out", "mlp_out")}
