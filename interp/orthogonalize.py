"""Weight orthogonalization: remove a direction from everything that writes to the residual stream.

W ← W − r̂ r̂ᵀ W for the token (and position) embeddings, every attention
output projection and every MLP down projection, and their biases. The edited
model never writes along r̂, so it equals directional ablation at every block
input, attention output and MLP output, and it saves with ``save_pretrained``
and reloads in plain transformers with no interp import.

Example:
    orthogonalize(model, direction)
    model.hf.save_pretrained("edited"); model.tokenizer.save_pretrained("edited")
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from . import arch
from .errors import InterpError


def _project_out_rows(w: torch.Tensor, u: torch.Tensor) -> None:
    """Rows of w are residual-space vectors: w ← w − (w u) uᵀ."""
    w -= torch.outer(w @ u, u)


def _project_out_columns(w: torch.Tensor, u: torch.Tensor) -> None:
    """Columns of w are residual-space vectors (nn.Linear weight [d, in]): w ← w − u (uᵀ w)."""
    w -= torch.outer(u, u @ w)


def orthogonalize(model, direction: torch.Tensor, inplace: bool = True):
    """Edit the weights of ``model`` (or a copy) so nothing writes along ``direction``."""
    from .model import Model

    if getattr(model, "backend", "hf") != "hf":
        raise InterpError("orthogonalize works on the Hugging Face backend; load the model with backend='hf'")
    layout = arch.layout(model)
    if layout.post_norms:
        raise InterpError(f"{model.architecture} applies a norm after attention and MLP outputs, so editing the "
                          f"projections is not equivalent to ablation; use hook ablation "
                          f"(interventions.everywhere) instead")
    d = direction.detach().to(torch.float64).flatten()
    if d.numel() != model.d_model or not torch.isfinite(d).all() or d.norm() < 1e-8:
        raise InterpError(f"direction must be a finite, non-zero vector of size {model.d_model}")
    if not inplace:
        model = Model(copy.deepcopy(model.hf), model.tokenizer, model.name + "-orthogonalized", model.source)
    hf = model.hf
    out_emb, in_emb = hf.get_output_embeddings(), hf.get_input_embeddings()
    if out_emb is not None and out_emb.weight is in_emb.weight:
        # untie so the unembedding keeps reading the full residual stream
        out_emb.weight = nn.Parameter(in_emb.weight.detach().clone())
        hf.config.tie_word_embeddings = False
        if hasattr(hf.config, "get_text_config"):
            hf.config.get_text_config().tie_word_embeddings = False
    with torch.no_grad():
        u = d.to(in_emb.weight.device, torch.float64)
        u = u / u.norm()

        def edit(param: torch.Tensor, columns: bool) -> None:
            w = param.data.double()
            (_project_out_columns if columns else _project_out_rows)(w, u)
            param.data.copy_(w.to(param.dtype))

        edit(in_emb.weight, columns=False)
        if layout.position_embedding:
            edit(arch.module(model, None, layout.position_embedding).weight, columns=False)
        for layer in range(model.n_layers):
            for path in (layout.attn_o_proj, layout.mlp_down):
                lin = arch.module(model, layer, path)
                edit(lin.weight, columns=not layout.conv1d)  # Conv1D stores [in, out]: residual vectors are rows
                if getattr(lin, "bias", None) is not None:
                    b = lin.bias.data.double()
                    b -= u * (u @ b)
                    lin.bias.data.copy_(b.to(lin.bias.dtype))
    arch.weights_edited(model)
    return model
