"""Interventions: small composable edits of a site's activations.

Each intervention maps ``x`` ([batch, seq, d], or [batch, seq, heads,
d_head] for ``attn_z``) to its edited value, given a ``Context`` that says
which token each row/column is. ``positions`` limits where it acts:
``"all"``, ``"prompt"``, ``"generated"``, a list of prompt token indices
(negative from the end of the prompt) shared by every prompt, or per prompt:
a list of index lists, or a boolean mask [prompts, tokens] over each
prompt's own tokens. ``heads`` limits an ``attn_z`` edit to some heads,
the same for every prompt or one list per prompt (``[[0], [5]]``: head 0 of
prompt 0, head 5 of prompt 1), e.g. one head per row of a sweep stacked into
one batch.
Apply them with ``model.intervene`` (or ``generate(..., interventions=...)``):

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

PositionLimit = Union[str, Sequence[int], Sequence[Sequence[int]], torch.Tensor]


@dataclass
class Context:
    """Where the current forward's tokens sit.

    ``token_index`` [batch, seq]: index of each column in its prompt's own
    tokens (prompt tokens first, then generated ones); ``valid`` [batch, seq]:
    False on padding; ``is_prompt`` [seq]: True for prompt tokens;
    ``prompt_lengths`` [batch]: tokens in each prompt; ``rows`` [batch]: which
    prompt (of the whole list given to ``generate`` or a capture) each batch
    row is, for per-prompt positions and patch sources.
    """

    token_index: torch.Tensor
    valid: torch.Tensor
    is_prompt: torch.Tensor
    prompt_lengths: torch.Tensor
    rows: torch.Tensor | None = None

    @classmethod
    def whole(cls, x: torch.Tensor) -> "Context":
        """Every column a prompt token, no padding (for direct calls and tests)."""
        b, s = x.shape[:2]
        idx = torch.arange(s, device=x.device).expand(b, s)
        return cls(idx, torch.ones(b, s, dtype=torch.bool, device=x.device),
                   torch.ones(s, dtype=torch.bool, device=x.device), torch.full((b,), s, device=x.device))

    def row_ids(self, n: int | None = None, per_prompt: str = "entry") -> torch.Tensor:
        """Prompt index of each batch row (0..batch−1 unless the caller said otherwise).

        With ``n`` (how many per-prompt entries an intervention was given) a row beyond them is an error.
        """
        rows = self.rows.to(self.valid.device) if self.rows is not None else \
            torch.arange(self.valid.shape[0], device=self.valid.device)
        if n is not None and len(rows) and int(rows.max()) >= n:
            raise InterpError(f"{n} given, but prompt {int(rows.max())} is running; give one {per_prompt} per prompt")
        return rows


def _unit_check(v: torch.Tensor, what: str) -> torch.Tensor:
    if not isinstance(v, torch.Tensor):
        v = torch.as_tensor(v)
    if not torch.is_floating_point(v):
        raise InterpError(f"{what} must be a floating-point tensor, got dtype {v.dtype}")
    if not torch.isfinite(v).all():
        raise InterpError(f"{what} contains NaN or infinite values")
    return v


def _per_prompt(positions) -> torch.Tensor | list[list[int]] | None:
    """A per-prompt position spec as a bool mask [prompts, tokens] or index lists; None if shared."""
    if isinstance(positions, torch.Tensor) or type(positions).__module__ == "numpy":
        t = torch.as_tensor(positions)
        if t.dtype != torch.bool or t.dim() != 2:
            raise InterpError(f"a position mask must be boolean [prompts, tokens], got {t.dtype} of shape "
                              f"{tuple(t.shape)}; for token indices pass a list of ints")
        return t
    rows = list(positions)
    if rows and all(isinstance(r, (list, tuple)) for r in rows):
        if all(isinstance(v, bool) for r in rows for v in r):
            width = max((len(r) for r in rows), default=0)
            return torch.tensor([list(r) + [False] * (width - len(r)) for r in rows], dtype=torch.bool)
        return [[_index(v) for v in r] for r in rows]
    return None


def _heads(heads) -> tuple[list[int] | list[list[int]] | None, bool]:
    """``heads`` as a list of head indices shared by every prompt, or one list per prompt; and which."""
    if heads is None:
        return None, False
    if isinstance(heads, (int, float, bool)):
        raise InterpError(f"heads must be a list of head indices (e.g. [{heads!r}]), got a single "
                          f"{type(heads).__name__}")
    hs = list(heads)
    nested = [isinstance(h, (list, tuple)) for h in hs]
    if any(nested) and not all(nested):
        raise InterpError("heads must be head indices shared by every prompt ([0, 3]) or one list per prompt "
                          "([[0], [3]]), not a mix of both")
    if hs and all(nested):
        return [[_index(h) for h in r] for r in hs], True
    return [_index(h) for h in hs], False


def _index(v) -> int:
    if isinstance(v, bool) or not float(v).is_integer():
        raise InterpError(f"token positions must be integers, got {v!r}")
    return int(v)


class Intervention:
    """Base class: subclasses implement ``edit(x, ctx)``; ``apply`` adds the position and head limits.

    A user function ``fn(x, ctx) -> x'`` is wrapped as ``Lambda(fn)``: that is the one signature for
    callables handed to ``model.intervene``.
    """

    def __init__(self, positions: PositionLimit = "all", heads: Sequence[int] | None = None):
        if isinstance(positions, str):
            if positions not in ("all", "prompt", "generated"):
                raise InterpError(f"positions must be 'all', 'prompt', 'generated', a list of prompt token indices, "
                                  f"per-prompt index lists or a boolean mask, got {positions!r}")
            self.positions = positions
        elif isinstance(positions, (int, float, bool)):
            raise InterpError(f"positions must be a list of token indices (e.g. [{positions!r}]), got a single "
                              f"{type(positions).__name__}")
        else:
            per = _per_prompt(positions)
            self.positions = per if per is not None else [_index(p) for p in positions]
        self.per_prompt = not isinstance(self.positions, str) and (
            isinstance(self.positions, torch.Tensor) or (bool(self.positions) and isinstance(self.positions[0], list)))
        self.heads, self.per_prompt_heads = _heads(heads)

    def check(self, shape: tuple[int, ...], site: str) -> None:
        """Validate against the site's trailing shape (called when attached)."""
        if self.heads is not None:
            if len(shape) != 2:
                raise InterpError(f"heads=... needs a per-head site (attn_z); {site} has shape {tuple(shape)}")
            flat = [h for r in self.heads for h in r] if self.per_prompt_heads else self.heads
            bad = sorted({h for h in flat if not 0 <= h < shape[0]})
            if bad:
                raise InterpError(f"heads {bad} out of range for {site} with {shape[0]} heads")

    def edit(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        raise NotImplementedError

    def _targets(self, positions: Sequence[int], lengths: torch.Tensor) -> torch.Tensor:
        """Prompt token indices (negative from each prompt's end) as absolute indices [len(positions), batch]."""
        p = torch.tensor(positions, device=lengths.device)[:, None]
        target = torch.where(p < 0, lengths[None] + p, p.expand(-1, lengths.shape[0]))
        if ((target < 0) | (target >= lengths[None])).any():
            raise InterpError(f"positions {list(positions)} are out of range for a prompt of "
                              f"{int(lengths.min())} tokens")
        return target

    def where(self, ctx: Context) -> torch.Tensor:
        """Boolean [batch, seq]: where this intervention acts."""
        mask = ctx.valid.clone()
        if isinstance(self.positions, str):
            if self.positions == "prompt":
                mask &= ctx.is_prompt[None]
            elif self.positions == "generated":
                mask &= ~ctx.is_prompt[None]
        elif isinstance(self.positions, torch.Tensor):  # per-prompt mask over each prompt's own tokens
            table = self.positions.to(mask.device)
            rows = ctx.row_ids(table.shape[0], "position-mask row")
            idx = ctx.token_index.clamp(0, table.shape[1] - 1)
            chosen = table[rows][torch.arange(len(rows), device=mask.device)[:, None], idx]
            mask &= chosen & (ctx.token_index < table.shape[1]) & ctx.is_prompt[None]
        elif self.per_prompt:
            rows = ctx.row_ids(len(self.positions), "position list").tolist()
            chosen = torch.zeros_like(mask)
            for b, r in enumerate(rows):
                if self.positions[r]:
                    target = self._targets(self.positions[r], ctx.prompt_lengths[b:b + 1])[:, 0]
                    chosen[b] = (ctx.token_index[b][None] == target[:, None]).any(0)
            mask &= chosen & ctx.is_prompt[None]
        else:
            chosen = torch.zeros_like(mask)
            if self.positions:
                target = self._targets(self.positions, ctx.prompt_lengths)  # [positions, batch]
                chosen = (ctx.token_index[None] == target[:, :, None]).any(0)
            mask &= chosen & ctx.is_prompt[None]
        return mask

    def apply(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        mask = self.where(ctx)
        if not mask.any():
            return x
        edited = self.edit(x, ctx)
        m = mask.reshape(mask.shape + (1,) * (x.dim() - 2))
        if self.heads is not None and x.dim() == 4:
            m = m & self._head_mask(x.shape[2], ctx)[:, None, :, None]
        return torch.where(m, edited, x)

    def _head_mask(self, n_heads: int, ctx: Context) -> torch.Tensor:
        """Boolean [batch, heads] (or [1, heads] when every prompt gets the same heads): which heads to edit."""
        dev = ctx.valid.device
        if not self.per_prompt_heads:
            keep = torch.zeros(1, n_heads, dtype=torch.bool, device=dev)
            keep[0, self.heads] = True
            return keep
        table = torch.zeros(len(self.heads), n_heads, dtype=torch.bool)
        for r, hs in enumerate(self.heads):
            table[r, hs] = True
        return table.to(dev)[ctx.row_ids(len(self.heads), "head list")]

    def __add__(self, other: "Intervention") -> "Compose":
        return Compose([self, other])


class Ablate(Intervention):
    """Project out a direction or an orthonormal basis: x ← x − Q Qᵀ x.

    ``directions`` is [d] or [k, d]; a basis must be orthonormal unless
    ``orthonormalize=True`` (then it is replaced by an orthonormal basis of
    its span, via QR).
    """

    def __init__(self, directions: torch.Tensor, orthonormalize: bool = False, positions: PositionLimit = "all",
                 heads: Sequence[int] | None = None):
        super().__init__(positions, heads)
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
        super().check(shape, site)
        if self.basis.shape[-1] != shape[-1]:
            raise InterpError(f"direction size {self.basis.shape[-1]} does not match site {site} of size {shape[-1]}")

    def edit(self, x, ctx):
        q = self.basis.to(x.device, x.dtype)
        return x - (x @ q.T) @ q


class Add(Intervention):
    """Activation addition: x ← x + scale·v."""

    def __init__(self, vector: torch.Tensor, scale: float = 1.0, positions: PositionLimit = "all",
                 heads: Sequence[int] | None = None):
        super().__init__(positions, heads)
        self.vector = _unit_check(vector, "the vector").detach().float()
        self.scale = float(scale)

    def check(self, shape, site):
        super().check(shape, site)
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

    def __init__(self, mean: torch.Tensor, positions: PositionLimit = "all", heads: Sequence[int] | None = None):
        super().__init__(positions, heads)
        self.mean = _unit_check(mean, "the mean").detach().float()

    def check(self, shape, site):
        super().check(shape, site)
        if tuple(self.mean.shape) != tuple(shape[-self.mean.dim():]):
            raise InterpError(f"mean of shape {tuple(self.mean.shape)} does not match site {site} {shape}")

    def edit(self, x, ctx):
        return self.mean.to(x.device, x.dtype).expand_as(x)


def _source_tensor(source, site: str | None = None, mask=None) -> tuple[torch.Tensor, torch.Tensor | None, dict]:
    """A [prompts, tokens, ...] tensor plus its token mask from a tensor (+ ``mask``), an ``Activations``
    captured at all positions, or a ``Cache`` from ``run_with_cache``."""
    from .activations import Activations

    if isinstance(source, Activations):
        if site is None:
            raise InterpError("patching from Activations needs a site")
        return source[site], source.mask, source.metadata
    if hasattr(source, "acts") and hasattr(source, "attention_mask"):  # a run_with_cache Cache
        if site is None:
            raise InterpError("patching from a Cache needs a site")
        return source[site].detach(), source.attention_mask.bool(), {}
    t = _unit_check(source, "the source activations")
    if mask is not None:
        mask = torch.as_tensor(mask).bool()
        if tuple(mask.shape) != tuple(t.shape[:2]):
            raise InterpError(f"source mask has shape {tuple(mask.shape)}, the source {tuple(t.shape[:2])}")
    return t, mask, {}


class Patch(Intervention):
    """Replace activations with those of another run, aligned by prompt token index.

    ``source`` is a [prompts, tokens, ...] tensor (with ``source_mask`` when
    it is padded), ``Activations`` captured with ``positions="all"`` or a
    ``Cache`` from ``run_with_cache`` (then ``site`` names which one); left-
    padded and left-aligned sources both line up, token by token. Prompts of
    the current run must have exactly the source's token counts.

    Per-prompt ``positions`` and ``heads`` give each row of a batch its own
    patch target, so many patches run as one forward (``patching_sweep``
    stacks copies of each prompt, one per position or head).

    Example (two copies of one prompt, patched at their own token or head):
        >>> x, u = torch.zeros(2, 3, 1), torch.ones(2, 3, 1)
        >>> Patch(u, positions=[[-1], [0]]).apply(x, Context.whole(x))[..., 0].tolist()
        [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]
        >>> z, uz = torch.zeros(2, 1, 2, 1), torch.ones(2, 1, 2, 1)   # [batch, seq, heads, d_head]
        >>> Patch(uz, heads=[[0], [1]]).apply(z, Context.whole(z))[:, 0, :, 0].tolist()
        [[1.0, 0.0], [0.0, 1.0]]
    """

    def __init__(self, source, site: str | None = None, positions: PositionLimit = "prompt",
                 heads: Sequence[int] | None = None, source_mask=None):
        super().__init__(positions, heads)
        self.source, self.source_mask, self.meta = _source_tensor(source, site, source_mask)

    def check(self, shape, site):
        super().check(shape, site)
        if tuple(self.source.shape[2:]) != tuple(shape):
            raise InterpError(f"patch source has trailing shape {tuple(self.source.shape[2:])}, site {site} has "
                              f"{tuple(shape)}")

    def _gather(self, x, ctx):
        rows = ctx.row_ids(self.source.shape[0], "patch-source row")
        src = self.source.to(x.device, x.dtype)[rows.to(self.source.device)]
        if self.source_mask is not None:
            m = self.source_mask.to(x.device)[rows]
            lengths = m.sum(1)
            first = m.long().argmax(1)  # where each prompt's tokens start (0 when left-aligned)
        else:
            lengths = torch.full((src.shape[0],), src.shape[1], device=x.device)
            first = torch.zeros_like(lengths)
        if not torch.equal(lengths.to(ctx.prompt_lengths.device), ctx.prompt_lengths.to(lengths.dtype)):
            raise InterpError(f"patch source prompts have {lengths.tolist()} tokens, this run's prompts have "
                              f"{ctx.prompt_lengths.tolist()}; patching needs equal token lengths")
        idx = (first[:, None] + ctx.token_index).clamp(0, src.shape[1] - 1)
        batch = torch.arange(x.shape[0], device=x.device)[:, None]
        return src[batch, idx]

    def where(self, ctx):
        return super().where(ctx) & ctx.is_prompt[None]

    def edit(self, x, ctx):
        return self._gather(x, ctx)


class SubspacePatch(Patch):
    """Patch only within span(Q): w ← w + Q Qᵀ (u − w), u the source activation."""

    def __init__(self, basis: torch.Tensor, source, site: str | None = None, positions: PositionLimit = "prompt",
                 orthonormalize: bool = False, heads: Sequence[int] | None = None, source_mask=None):
        super().__init__(source, site, positions, heads, source_mask)
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

    def __init__(self, fn: Callable[[torch.Tensor, Context], torch.Tensor], positions: PositionLimit = "all",
                 heads: Sequence[int] | None = None):
        super().__init__(positions, heads)
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


class OnRows(Intervention):
    """Another intervention, limited to some prompts of the list being run (by their index in it).

    Lets one batch carry several conditions: e.g. the same prompts twice, the second copy steered.
    Rows are the prompts' places in the list given to ``generate`` or a capture (``Context.rows``).

    Example:
        prompts = harmless + harmless     # the second copy gets +r
        steer = OnRows(Add(r), rows=range(len(harmless), 2 * len(harmless)))
        texts = generate(model, prompts, interventions={"resid_pre.12": steer})
    """

    def __init__(self, inner: Intervention, rows: Sequence[int]):
        super().__init__("all")
        if not isinstance(inner, Intervention):
            raise InterpError(f"OnRows wraps an Intervention, got {type(inner).__name__}")
        self.inner = inner
        self.rows = torch.tensor(sorted({_index(r) for r in rows}), dtype=torch.long)

    def check(self, shape, site):
        self.inner.check(shape, site)

    def apply(self, x, ctx):
        chosen = torch.isin(ctx.row_ids(), self.rows.to(ctx.valid.device))
        if not chosen.any():
            return x
        edited = self.inner.apply(x, ctx)
        return torch.where(chosen.reshape((-1,) + (1,) * (x.dim() - 1)), edited, x)


class Record(Intervention):
    """Keep the site's tensor as the forward passes, without changing it.

    ``value`` is the last forward's tensor ([batch, seq, ...] in padded
    coordinates, padding included); with ``history=True`` ``values`` keeps
    every forward's (one per generated token under ``generate``). Detached
    copies unless ``grad=True``.

    Example:
        rec = Record()
        with model.intervene({"resid_pre.3": rec}):
            model.run(model.pad(model.encode(["Hi"]).ids))
        rec.value.shape   # [1, seq, d_model]
    """

    def __init__(self, history: bool = False, grad: bool = False):
        super().__init__("all")
        self.history, self.grad = history, grad
        self.value: torch.Tensor | None = None
        self.values: list[torch.Tensor] = []

    def apply(self, x, ctx):
        v = x if self.grad else x.detach().clone()
        self.value = v
        if self.history:
            self.values.append(v)
        return x


class Replace(Intervention):
    """x ← ``value``, a tensor of the site's full shape for this forward (e.g. a cached activation edited
    by hand), or a callable ``value(x, ctx)`` that returns one; ``positions`` limits where it lands."""

    def __init__(self, value, positions: PositionLimit = "all", heads: Sequence[int] | None = None):
        super().__init__(positions, heads)
        self.value = value

    def edit(self, x, ctx):
        v = self.value(x, ctx) if callable(self.value) else self.value
        if not isinstance(v, torch.Tensor) or v.shape != x.shape:
            raise InterpError(f"Replace needs a tensor of the site's shape {tuple(x.shape)} for this forward, got "
                              f"{tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__}")
        return v.to(x.device, x.dtype)


class Splice(Intervention):
    """x ← module(x): run the site through a module, e.g. an SAE's reconstruction, in ``dtype``."""

    def __init__(self, module: Callable[[torch.Tensor], torch.Tensor], positions: PositionLimit = "all",
                 dtype: torch.dtype | None = torch.float32):
        super().__init__(positions)
        self.module, self.dtype = module, dtype

    def edit(self, x, ctx):
        y = self.module(x if self.dtype is None else x.to(self.dtype))
        if not isinstance(y, torch.Tensor) or y.shape != x.shape:
            raise InterpError(f"the spliced module must return a tensor of shape {tuple(x.shape)}")
        return y.to(x.dtype)


def everywhere(model, direction: torch.Tensor, positions: PositionLimit = "all") -> dict:
    """Directional ablation as in the refusal paper: block input, attention and MLP output, every layer."""
    ablate = Ablate(direction, positions=positions)
    return {f"{name}.{layer}": ablate for layer in range(model.n_layers) for name in ("resid_pre", "attn_out", "mlp_out")}


# --- added for patching (Makelov et al.) ---
class ProjectionPatch(Patch):
    """Patch along a vector as given: w ← w + (pᵀ(u − w)) p, u the source activation.

    Unlike ``SubspacePatch``, ``p`` is neither normalized nor detached: DAS trains ``p`` through the
    patched forward (it passes p/|p|). For a non-unit ``p`` this is NOT the paper's patch along
    span(p) (which divides by |p|²); the illusion checks pass unit vectors and use raw parts only to
    measure the earlier, shortened patch. Only the selected rows are computed, one [rows, d] product.

    Example:
        >>> x, u = torch.zeros(1, 2, 2), torch.ones(1, 2, 2)
        >>> ProjectionPatch(torch.tensor([0.5, 0.0]), u, positions=[-1]).apply(x, Context.whole(x))
        tensor([[[0.0000, 0.0000],
                 [0.2500, 0.0000]]])
    """

    def __init__(self, direction: torch.Tensor, source, site: str | None = None, positions: PositionLimit = "prompt",
                 source_mask=None):
        super().__init__(source, site, positions, None, source_mask)
        if not isinstance(direction, torch.Tensor) or direction.dim() != 1 or not torch.is_floating_point(direction):
            raise InterpError("ProjectionPatch needs a 1-D floating-point direction tensor")
        self.direction = direction

    def check(self, shape, site):
        super().check(shape, site)
        if self.direction.shape[0] != shape[-1] or len(shape) != 1:
            raise InterpError(f"direction of size {self.direction.shape[0]} does not match site {site} of shape "
                              f"{tuple(shape)}")

    def apply(self, x, ctx):
        mask = self.where(ctx)
        if not mask.any():
            return x
        u = self._gather(x, ctx)[mask]
        w = x[mask]
        p = self.direction.to(x.device, x.dtype)
        out = x.clone()
        out[mask] = w + ((u - w) @ p)[:, None] * p
        return out


# --- added for numeric (El-Shangiti et al.) ---
class AddPerPrompt(Intervention):
    """x ← x + vectors[p] for prompt p: one vector per prompt, e.g. one (direction, α) per row of a sweep
    stacked into one batch. ``positions`` as elsewhere (per-prompt lists or a mask pick each row's token).

    Example:
        >>> x = torch.zeros(2, 3, 2)
        >>> iv = AddPerPrompt(torch.tensor([[1.0, 0.0], [0.0, -2.0]]), positions=[[0], [2]])
        >>> iv.apply(x, Context.whole(x)).tolist()
        [[[1.0, 0.0], [0.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0], [0.0, -2.0]]]
    """

    def __init__(self, vectors: torch.Tensor, positions: PositionLimit = "all"):
        super().__init__(positions)
        self.vectors = _unit_check(vectors, "the vectors").detach().float()
        if self.vectors.dim() != 2:
            raise InterpError(f"AddPerPrompt needs vectors of shape [prompts, d], got {tuple(self.vectors.shape)}")

    def check(self, shape, site):
        super().check(shape, site)
        if len(shape) != 1 or self.vectors.shape[-1] != shape[-1]:
            raise InterpError(f"vectors of width {self.vectors.shape[-1]} do not match site {site} of shape "
                              f"{tuple(shape)}")

    def edit(self, x, ctx):
        rows = ctx.row_ids(self.vectors.shape[0], "vector")
        return x + self.vectors.to(x.device, x.dtype)[rows][:, None]


# --- added for SAE interop (issue 21): an SAELens SAE as interventions ---
class SAEView:
    """How an SAE reads and writes one site's tensor: its layout, head and dtype.

    ``sae`` is a ``sae_lens`` SAE (or anything with ``encode``, ``decode``,
    ``W_dec`` [d_sae, d_in] and ``cfg.d_in``/``cfg.d_sae``). A per-head site
    ([.., heads, d_head], ``attn_z``) is read whole (flattened heads, SAELens'
    ``hook_z`` layout) or, with ``head`` (SAELens' ``hook_head_index``, taken
    from the SAE's metadata when not given), one head only. Inputs are cast to
    the SAE's dtype; outputs back to the site's.

    Example:
        view = SAEView(sae)
        feats = view.encode(x)                 # [batch, seq, d_sae]
        x_hat = view.write(x, view.decode(feats, x))
    """

    def __init__(self, sae, head: int | None = None):
        cfg = getattr(sae, "cfg", None)
        if cfg is None or not all(hasattr(sae, a) for a in ("encode", "decode", "W_dec")):
            raise InterpError("an SAE here is a sae_lens SAE (encode, decode, W_dec, cfg); load one with "
                              "interp.sae.load_sae(path)")
        meta = getattr(cfg, "metadata", None)
        self.sae = sae
        self.head = head if head is not None else (getattr(meta, "hook_head_index", None) if meta is not None else None)
        self.d_in, self.d_sae = int(cfg.d_in), int(cfg.d_sae)

    def check(self, shape: tuple[int, ...], site: str) -> None:
        if self.head is not None:
            if len(shape) != 2 or not 0 <= self.head < shape[0]:
                raise InterpError(f"the SAE reads head {self.head}, but site {site} has shape {tuple(shape)}; a head "
                                  f"index needs a per-head site (attn_z)")
            width = shape[-1]
        else:
            width = 1
            for n in shape:
                width *= n
        if width != self.d_in:
            raise InterpError(f"the SAE's d_in is {self.d_in}, site {site} gives {width} (shape {tuple(shape)}); "
                              f"it was trained on another site or model")

    @property
    def dtype(self) -> torch.dtype:
        return getattr(self.sae, "dtype", None) or self.sae.W_dec.dtype

    def read(self, x: torch.Tensor) -> torch.Tensor:
        """The SAE's input from a site tensor: the chosen head, in the SAE's dtype and device."""
        if self.sae.W_dec.device != x.device:
            self.sae.to(x.device)
        sub = x[:, :, self.head] if self.head is not None else x
        return sub.to(self.dtype)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Feature activations [batch, seq, d_sae] of a site tensor."""
        sub = self.read(x)
        if sub.dim() == 4 and not getattr(self.sae, "hook_z_reshaping_mode", False):
            sub = sub.flatten(2)  # SAELens' hook_z layout: heads concatenated
        return self.sae.encode(sub)  # an SAE in hook_z mode flattens the heads itself

    def decode(self, feats: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The reconstruction of ``feats`` in the SAE's input shape for site tensor ``x`` (SAE dtype)."""
        y = self.sae.decode(feats)
        return y.reshape(x[:, :, self.head].shape if self.head is not None else x.shape)

    def rows(self, features: Sequence[int], x: torch.Tensor) -> torch.Tensor:
        """Decoder rows [len(features), ...] shaped like one token of the SAE's input."""
        w = self.sae.W_dec[list(features)].to(x.device, self.dtype)
        tail = x.shape[3:] if self.head is not None else x.shape[2:]
        return w.reshape((len(features),) + tuple(tail))

    def write(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Put the SAE-side tensor ``y`` back into the site tensor (only the chosen head, if any)."""
        if self.head is None:
            return y.to(x.dtype)
        out = x.clone()
        out[:, :, self.head] = y.to(x.dtype)
        return out


def _feature_list(features, d_sae: int) -> list[int]:
    feats = [features] if isinstance(features, int) or (isinstance(features, float) and float(features).is_integer()) \
        else list(features)
    out = [_index(f) for f in feats]
    if not out:
        raise InterpError("no features given; pass feature indices, e.g. [12, 40]")
    bad = [f for f in out if not 0 <= f < d_sae]
    if bad:
        raise InterpError(f"features {bad} out of range for an SAE with {d_sae} features")
    return out


class SAESplice(Splice):
    """x ← the SAE's reconstruction decode(encode(x)) (SAELens' splice without the error term).

    Extends ``Splice`` with the SAE's layout: per-head sites, ``hook_head_index`` (only that head is
    replaced) and dtype. ``Splice(sae)`` still works for a plain full-width SAE and gives the same values.

    Example:
        with model.intervene({sae_site(sae): SAESplice(sae)}):
            loss = text_ce(model, texts)
    """

    def __init__(self, sae, positions: PositionLimit = "all", head: int | None = None):
        super().__init__(sae, positions)
        self.view = SAEView(sae, head)

    def check(self, shape, site):
        super().check(shape, site)
        self.view.check(shape, site)

    def edit(self, x, ctx):
        return self.view.write(x, self.view.decode(self.view.encode(x), x))


class FeatureAblate(Intervention):
    """Zero (or scale) chosen SAE features and keep the SAE's error term, so only those features change.

    x ← decode(f') + (x − decode(f)), f = encode(x), f' = f with ``features`` multiplied by ``scale``
    (0: ablate). SAELens computes the same with ``use_error_term=True``.

    Example:
        >>> # with model.intervene({sae_site(sae): FeatureAblate(sae, [12, 40])}): ...
    """

    def __init__(self, sae, features, scale: float = 0.0, positions: PositionLimit = "all",
                 head: int | None = None):
        super().__init__(positions)
        self.view = SAEView(sae, head)
        self.features = _feature_list(features, self.view.d_sae)
        self.scale = float(scale)

    def check(self, shape, site):
        super().check(shape, site)
        self.view.check(shape, site)

    def edit(self, x, ctx):
        f = self.view.encode(x)
        edited = f.clone()
        edited[..., self.features] = f[..., self.features] * self.scale
        error = self.view.read(x) - self.view.decode(f, x)
        return self.view.write(x, self.view.decode(edited, x) + error)


class FeatureSteer(Intervention):
    """Feature steering: x ← x + Σᵢ cᵢ · W_dec[featureᵢ] (the decoder rows, SAELens' steering vector).

    ``coefficients`` is one number for all features or one per feature.

    Example:
        with model.intervene({sae_site(sae): FeatureSteer(sae, 123, 8.0, positions="generated")}):
            model.generate(["Tell me a story"])
    """

    def __init__(self, sae, features, coefficients: float | Sequence[float] = 1.0, positions: PositionLimit = "all",
                 head: int | None = None):
        super().__init__(positions)
        self.view = SAEView(sae, head)
        self.features = _feature_list(features, self.view.d_sae)
        coefs = [coefficients] * len(self.features) if isinstance(coefficients, (int, float)) else list(coefficients)
        if len(coefs) != len(self.features):
            raise InterpError(f"{len(coefs)} coefficients for {len(self.features)} features; give one, or one each")
        self.coefficients = torch.tensor([float(c) for c in coefs])

    def check(self, shape, site):
        super().check(shape, site)
        self.view.check(shape, site)

    def edit(self, x, ctx):
        rows = self.view.rows(self.features, x)
        c = self.coefficients.to(x.device, rows.dtype).reshape((-1,) + (1,) * (rows.dim() - 1))
        vector = (c * rows).sum(0)
        return self.view.write(x, self.view.read(x) + vector)
