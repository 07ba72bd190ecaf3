"""Active-subspace initialization of sparse autoencoders (arXiv 2508.16929).

Attention outputs fill only part of their space (k99/d ≈ 0.6), so SAE
features started in random directions partly point where the data never
goes and may never fire. Active-subspace init starts them inside the data:
P = the top ``d_active`` principal directions of a mean-centered batch; each
decoder row is a random vector projected into span(P); the encoder is the
decoder's transpose and the decoder bias the mean. ``ActiveSubspaceInit`` is
the same as a scikit-learn estimator (fitted ``W_dec_``, ``components_``;
``transform`` gives coordinates in the active subspace).

``initialize`` is the paper's recipe as the official code (OpenMOSS lm-saes)
runs it on a SAELens SAE: the SAE's own random decoder projected into the
subspace, b_dec = the mean, the decoder-norm grid search, encoder = decoderᵀ;
the bias and norm handling apply to the random init too, so a comparison
changes only the directions.

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

import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin

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


def _draw(x: torch.Tensor, d_sae: int, d_active: int | None, threshold: float, seed: int):
    """(mean, P, unit decoder rows [d_sae, d] in span(P), d_active), all float64."""
    if d_active is None:
        from .rank import EffectiveRank

        d_active = EffectiveRank(threshold=threshold, n_bootstrap=0).fit(x).k_
    mean, p = principal_directions(x, int(d_active))
    gen = torch.Generator().manual_seed(seed)
    # W_rand[:, :d_active] Pᵀ: random coordinates in the principal basis, i.e. a Gaussian projected into span(P)
    w_dec = torch.randn(d_sae, p.shape[0], generator=gen, dtype=torch.float64) @ p
    w_dec = w_dec / w_dec.norm(dim=1, keepdim=True)
    return mean, p, w_dec, int(d_active)


def active_subspace_init(activations, d_sae: int, d_active: int | None = None, threshold: float = 0.99,
                         seed: int = 0) -> dict:
    """Decoder [d_sae, d] with unit rows in the top-``d_active`` principal subspace, encoder = decoderᵀ, b_dec = mean.

    ``d_active=None`` uses the measured k at ``threshold`` (k99) of these
    activations. Returns ``{"W_dec", "W_enc", "b_dec", "d_active"}`` with
    SAELens' names and shapes (W_enc [d, d_sae], W_dec [d_sae, d]).
    """
    mean, _, w_dec, d_active = _draw(_check(activations), d_sae, d_active, threshold, seed)
    return {"W_dec": w_dec.float(), "W_enc": w_dec.T.contiguous().float(), "b_dec": mean.float(),
            "d_active": d_active}


class ActiveSubspaceInit(TransformerMixin, BaseEstimator):
    """The active-subspace initialization as a scikit-learn estimator.

    Parameters: ``d_sae`` (dictionary size; None means 8 × d), ``d_active``
    (None means the measured k at ``threshold``), ``threshold``, ``seed``.

    Fitted (numpy): ``mean_`` [d], ``components_`` [d_active, d] (orthonormal
    top principal directions), ``W_dec_`` [d_sae, d] (unit rows in their
    span), ``W_enc_`` [d, d_sae], ``b_dec_`` [d], ``d_active_``,
    ``n_features_in_``. ``transform(X)`` gives the coordinates of X in the
    active subspace, ``(X − mean_) components_ᵀ``; ``init(sae)`` copies the
    init into a SAELens SAE (as ``apply_to_sae``).

    Example:
        >>> import numpy as np
        >>> X = np.random.default_rng(0).normal(size=(300, 3)) @ np.random.default_rng(1).normal(size=(3, 8))
        >>> est = ActiveSubspaceInit(d_sae=32).fit(X)
        >>> est.d_active_, est.W_dec_.shape, est.transform(X).shape
        (3, (32, 8), (300, 3))
    """

    def __init__(self, d_sae: int | None = None, d_active: int | None = None, threshold: float = 0.99,
                 seed: int = 0):
        self.d_sae = d_sae
        self.d_active = d_active
        self.threshold = threshold
        self.seed = seed

    def fit(self, X, y=None) -> "ActiveSubspaceInit":
        """X: [n_tokens, d] activations (numpy or torch); ``y`` is ignored."""
        from .rank import _as_matrix

        x = _check(_as_matrix(X))
        if x.shape[0] < 2:
            raise InterpError(f"n_samples = {x.shape[0]}: the principal directions need at least 2 tokens")
        d_sae = self.d_sae if self.d_sae is not None else 8 * x.shape[1]
        mean, p, w_dec, d_active = _draw(x, d_sae, self.d_active, self.threshold, self.seed)
        self.mean_, self.components_ = mean.numpy(), p.numpy()
        self.W_dec_ = w_dec.float().numpy()
        self.W_enc_ = np.ascontiguousarray(self.W_dec_.T)
        self.b_dec_ = mean.float().numpy()
        self.d_active_, self.n_features_in_ = d_active, x.shape[1]
        return self

    def transform(self, X) -> np.ndarray:
        """Coordinates [n, d_active] of X in the active subspace (centered by the fitted mean)."""
        from sklearn.utils.validation import check_is_fitted

        from .rank import _as_matrix

        check_is_fitted(self)
        x = _check(_as_matrix(X))
        if x.shape[1] != self.n_features_in_:
            raise InterpError(f"X has {x.shape[1]} features, but ActiveSubspaceInit is expecting "
                              f"{self.n_features_in_} features as input (the d it was fitted on)")
        return ((x - torch.from_numpy(self.mean_)) @ torch.from_numpy(self.components_).T).numpy()

    def init(self, sae, keep_row_norms: bool = True) -> None:
        """Copy the fitted init into a SAELens SAE in place (see ``apply_to_sae``)."""
        from sklearn.utils.validation import check_is_fitted

        check_is_fitted(self)
        apply_to_sae(sae, {"W_dec": torch.from_numpy(self.W_dec_), "W_enc": torch.from_numpy(self.W_enc_),
                           "b_dec": torch.from_numpy(self.b_dec_), "d_active": self.d_active_}, keep_row_norms)


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


# ------------------------------------------------------------------ the paper's recipe, as the official code runs it
@torch.no_grad()
def reconstruction_mse(sae, x: torch.Tensor, batch_size: int = 1024) -> float:
    """Mean over tokens of ‖x − decode(encode(x))‖² (the quantity the decoder-norm search minimizes)."""
    total = 0.0
    for s in range(0, x.shape[0], batch_size):
        xb = x[s:s + batch_size].to(sae.W_dec.dtype)
        total += float((xb - sae.decode(sae.encode(xb))).double().pow(2).sum())
    return total / max(x.shape[0], 1)


@torch.no_grad()
def search_decoder_norm(sae, x: torch.Tensor, coarse: tuple[float, ...] | None = None, n_fine: int = 20) -> dict:
    """Set every decoder row to the norm with the lowest reconstruction error on ``x``; encoder = decoderᵀ.

    The official code's grid: 10 norms 0.1..1, then 20 norms from best − 0.09 to best + 0.1 (for
    inputs scaled to mean norm √d). Returns ``{"decoder_norm", "mse", "coarse", "fine"}``.

    Example:
        info = search_decoder_norm(sae, x_val)   # sae.W_dec rows now all have norm info["decoder_norm"]
    """
    coarse = tuple(np.linspace(0.1, 1.0, 10)) if coarse is None else coarse
    unit = sae.W_dec / sae.W_dec.norm(dim=1, keepdim=True)

    def trial(norm: float) -> float:
        sae.W_dec.copy_(unit * norm)
        sae.W_enc.copy_(sae.W_dec.T)
        return reconstruction_mse(sae, x)

    first = {round(float(n), 6): trial(float(n)) for n in coarse}
    best = min(first, key=first.get)
    fine = {round(float(n), 6): trial(float(n)) for n in np.linspace(best - 0.09, best + 0.1, n_fine) if n > 0}
    chosen = min(fine, key=fine.get)
    trial(chosen)
    return {"decoder_norm": chosen, "mse": fine[chosen], "coarse": first, "fine": fine}


@torch.no_grad()
def initialize(sae, init: str, fit_x, val_x=None, d_active: int | None = None, threshold: float = 0.99,
               b_dec: str = "mean", norm_search: bool = True, norm_search_tokens: int = 1024) -> dict:
    """The paper's ASI recipe as the official code (OpenMOSS lm-saes ``Initializer``) runs it, with the same
    bias and norm handling for both inits so that only the decoder directions differ.

    1. ``init="active"``: d_active = measured k at ``threshold`` on ``val_x`` (unless given); P = the top
       d_active principal directions of ``fit_x``; W_dec ← W_dec[:, :d_active] P (the SAE's own random
       numbers as coordinates in the subspace). ``init="random"`` keeps SAELens' random decoder.
    2. b_dec ← mean of ``fit_x`` (``b_dec="mean"``, the official ``bias_init_method``) or 0 (``"zero"``),
       for both inits.
    3. the decoder-norm search on ``val_x`` (``search_decoder_norm``), for both inits; without it the
       rows keep SAELens' initial norms.
    4. W_enc ← W_decᵀ.

    ``val_x`` None makes the choices on ``fit_x``. Returns what was chosen:
    ``{"init", "b_dec", "d_active", "decoder_norm", "norm_search", "seconds", ...}``.

    Example:
        sae = build_sae("topk", d_in=576, d_sae=9216, k=32)
        info = initialize(sae, "active", x_train, x_val)   # info["d_active"], info["decoder_norm"]
    """
    t0 = time.perf_counter()
    if init not in ("random", "active"):
        raise InterpError(f"init must be 'random' or 'active', got {init!r}")
    if b_dec not in ("mean", "zero"):
        raise InterpError(f"b_dec must be 'mean' or 'zero', got {b_dec!r}")
    fit = _check(fit_x)
    val = fit if val_x is None else _check(val_x)
    if fit.shape[1] != sae.cfg.d_in or val.shape[1] != sae.cfg.d_in:
        raise InterpError(f"the activations have d = {fit.shape[1]}, the SAE has d_in = {sae.cfg.d_in}")
    dtype = sae.W_dec.dtype
    norms = sae.W_dec.norm(dim=1, keepdim=True).clone()
    info: dict = {"init": init, "b_dec": b_dec, "choices_on": "init batch" if val_x is None else "validation",
                  "d_active": None}
    if init == "active":
        if d_active is None:
            from .rank import EffectiveRank

            d_active = EffectiveRank(threshold=threshold, n_bootstrap=0).fit(val).k_
        _, p = principal_directions(fit, int(d_active))
        sae.W_dec.copy_((sae.W_dec.double()[:, :p.shape[0]] @ p).to(dtype))
        info["d_active"] = int(d_active)
    sae.b_dec.copy_(fit.mean(0).to(dtype) if b_dec == "mean" else torch.zeros_like(sae.b_dec))
    if norm_search:
        found = search_decoder_norm(sae, val[:norm_search_tokens].to(dtype))
        info.update(decoder_norm=found["decoder_norm"], norm_search={"mse": found["mse"], "coarse": found["coarse"],
                                                                     "fine": found["fine"]})
    else:  # SAELens' own row norms, so the inits still differ only in direction
        sae.W_dec.copy_(sae.W_dec / sae.W_dec.norm(dim=1, keepdim=True) * norms)
        info["decoder_norm"] = None
    sae.W_enc.copy_(sae.W_dec.T)
    info["seconds"] = time.perf_counter() - t0
    return info
