"""Active-subspace initialization of sparse autoencoders (arXiv 2508.16929).

Attention outputs fill only part of their space (k99/d ≈ 0.6), so SAE
features started in random directions partly point where the data never
goes and may never fire. Active-subspace init starts them inside the data:
P = the top ``d_active`` principal directions of a mean-centered batch; each
decoder row is a random vector projected into span(P); the encoder is the
decoder's transpose and the decoder bias the mean.

Example:
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.randn(400, 3, generator=g) @ torch.randn(3, 8, generator=g)
    >>> init = active_subspace_init(x, d_sae=32, d_active=3)
    >>> init["W_dec"].shape, init["W_enc"].shape, init["d_active"]
    (torch.Size([32, 8]), torch.Size([8, 32]), 3)
"""
from __future__ import annotations

import time

import torch

from ..errors import InterpError


def _check(activations) -> torch.Tensor:
    x = torch.as_tensor(activations).double()
    if x.dim() != 2:
        raise InterpError(f"activations must be [tokens, d], got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise InterpError("activations contain NaN or infinite values; check the capture (dtype overflow?)")
    return x


def principal_directions(activations, d_active: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean [d], P [d_active, d] orthonormal top principal directions) of a batch."""
    x = _check(activations)
    d = x.shape[1]
    if not 1 <= d_active <= d:
        raise InterpError(f"d_active must be between 1 and d = {d}, got {d_active}")
    if x.shape[0] < d_active:
        raise InterpError(f"need at least d_active = {d_active} tokens to find {d_active} directions, "
                          f"got {x.shape[0]}; pass a larger batch")
    mean = x.mean(0)
    _, _, vh = torch.linalg.svd(x - mean, full_matrices=False)
    return mean, vh[:d_active]


def active_subspace_init(activations, d_sae: int, d_active: int | None = None, threshold: float = 0.99,
                         seed: int = 0) -> dict:
    """Decoder [d_sae, d] with unit rows in the top-``d_active`` principal subspace, encoder = decoderᵀ, b_dec = mean.

    ``d_active=None`` uses the measured k at ``threshold`` (k99) of these
    activations. Returns ``{"W_dec", "W_enc", "b_dec", "d_active"}`` with
    SAELens' names and shapes (W_enc [d, d_sae], W_dec [d_sae, d]).
    """
    x = _check(activations)
    if d_active is None:
        from .rank import EffectiveRank

        d_active = EffectiveRank(threshold=threshold, n_bootstrap=0).fit(x).k_
    mean, p = principal_directions(x, int(d_active))
    gen = torch.Generator().manual_seed(seed)
    # W_rand[:, :d_active] Pᵀ: random coordinates in the principal basis, i.e. a Gaussian projected into span(P)
    w_dec = torch.randn(d_sae, p.shape[0], generator=gen, dtype=torch.float64) @ p
    w_dec = w_dec / w_dec.norm(dim=1, keepdim=True)
    return {"W_dec": w_dec.float(), "W_enc": w_dec.T.contiguous().float(), "b_dec": mean.float(),
            "d_active": int(d_active)}


def apply_to_sae(sae, init: dict, keep_row_norms: bool = True) -> None:
    """Copy an ``active_subspace_init`` result into a SAELens SAE (shapes checked).

    With ``keep_row_norms`` each decoder row keeps the norm the SAE's own
    initialization gave it (SAELens' ``decoder_init_norm``), so active and
    random init differ only in direction; the encoder is set to the decoderᵀ.
    """
    for name in ("W_dec", "W_enc", "b_dec"):
        param = getattr(sae, name, None)
        if param is None:
            raise InterpError(f"the SAE ({type(sae).__name__}) has no parameter {name}; active-subspace init "
                              f"needs W_enc, W_dec and b_dec")
        if tuple(param.shape) != tuple(init[name].shape):
            raise InterpError(f"{name}: the SAE has shape {tuple(param.shape)}, the init has "
                              f"{tuple(init[name].shape)}; build the init with the SAE's d_sae and d_in")
    with torch.no_grad():
        w_dec = init["W_dec"].to(sae.W_dec.dtype)
        if keep_row_norms:
            w_dec = w_dec * sae.W_dec.norm(dim=1, keepdim=True) / w_dec.norm(dim=1, keepdim=True)
        sae.W_dec.copy_(w_dec)
        sae.W_enc.copy_(w_dec.T)
        sae.b_dec.copy_(init["b_dec"].to(sae.b_dec.dtype))


def init_sae(sae, activations, d_active: int | None = None, threshold: float = 0.99, seed: int = 0) -> dict:
    """Active-subspace init applied in place to any SAELens SAE; returns ``{"d_active", "seconds"}``.

    Example:
        sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=576, d_sae=4608, k=32))
        init_sae(sae, store.load().tokens("attn_out.3")[:20000])
    """
    t0 = time.perf_counter()
    init = active_subspace_init(activations, sae.cfg.d_sae, d_active, threshold, seed)
    if init["W_dec"].shape[1] != sae.cfg.d_in:
        raise InterpError(f"the activations have d = {init['W_dec'].shape[1]}, the SAE has d_in = {sae.cfg.d_in}")
    apply_to_sae(sae, init)
    return {"d_active": init["d_active"], "seconds": time.perf_counter() - t0}
