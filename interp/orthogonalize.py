"""Weight orthogonalization: remove a direction from everything that writes to the residual stream.

W ← W − r̂ r̂ᵀ W for the token (and position) embeddings, every attention
output projection and every MLP down projection, and their biases. The edited
model never writes along r̂, so it equals directional ablation at every block
input, attention output and MLP output, and it saves with ``save_pretrained``
and reloads in plain transformers with no interp import.

Example:
    orthogonalize(model, direction)
    model.hf.save_pretrained("edited"); model.tokenizer.save_pretrained("edited")

On a model split by accelerate (``device_map``) each weight is edited on its
own device; disk-offloaded weights are rewritten into the ``offload_folder``
given to ``load_model`` (the checkpoint files are never touched).
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from . import arch, offload
from .errors import InterpError


def _project_out_rows(w: torch.Tensor, u: torch.Tensor) -> None:
    """Rows of w are residual-space vectors: w ← w − (w u) uᵀ."""
    w -= torch.outer(w @ u, u)


def _project_out_columns(w: torch.Tensor, u: torch.Tensor) -> None:
    """Columns of w are residual-space vectors (nn.Linear weight [d, in]): w ← w − u (uᵀ w)."""
    w -= torch.outer(u, u @ w)


def orthogonalize(model, direction: torch.Tensor, inplace: bool = True):
    """Edit the weights of ``model`` (or a copy) so nothing writes along ``direction``."""
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
        if offload.is_offloaded(model.hf):
            raise InterpError("inplace=False copies the model, but an offloaded copy would share its offload files "
                              "with the original; orthogonalize it in place (load it a second time to compare)")
        # type(model), not an import of Model: interp.intervene uses this module, and model imports that
        model = type(model)(copy.deepcopy(model.hf), model.tokenizer, model.name + "-orthogonalized", model.source)
    hf = model.hf
    offload.check_writable(hf)
    out_emb, in_emb = hf.get_output_embeddings(), hf.get_input_embeddings()
    if out_emb is not None and out_emb.weight is in_emb.weight:
        if in_emb.weight.device.type == "meta":
            raise InterpError("the tied input/output embedding is offloaded; keep it on a device (map "
                              "'model.embed_tokens' and 'lm_head' to a GPU or 'cpu' in device_map) to orthogonalize")
        # untie so the unembedding keeps reading the full residual stream
        out_emb.weight = nn.Parameter(in_emb.weight.detach().clone())
        hf.config.tie_word_embeddings = False
        if hasattr(hf.config, "get_text_config"):
            hf.config.get_text_config().tie_word_embeddings = False
    unit = d / d.norm()

    def edit(mod: nn.Module, name: str, columns: bool | None) -> None:
        # sharded models: each weight is edited where it lives (its device, or accelerate's offload store)
        w = offload.read_weight(mod, name)
        if w is None:
            return
        u = unit.to(w.device)
        w64 = w.detach().double()
        if columns is None:  # a bias: a residual-space vector
            w64 -= u * (u @ w64)
        else:
            (_project_out_columns if columns else _project_out_rows)(w64, u)
        offload.write_weight(mod, name, w64.to(w.dtype))

    with torch.no_grad():
        edit(in_emb, "weight", columns=False)
        if layout.position_embedding:
            edit(arch.module(model, None, layout.position_embedding), "weight", columns=False)
        for layer in range(model.n_layers):
            for path in (layout.attn_o_proj, layout.mlp_down):
                lin = arch.module(model, layer, path)
                edit(lin, "weight", columns=not layout.conv1d)  # Conv1D stores [in, out]: residual vectors are rows
                if getattr(lin, "bias", None) is not None:
                    edit(lin, "bias", columns=None)
    arch.weights_edited(model)
    return model


def ablation_weights(model, targets) -> list[tuple[nn.Module, str, torch.Tensor]]:
    """Edited copies of the weights (and biases) of the modules ``targets`` name, with a span removed.

    ``targets`` is a list of ``(layer, path, basis)``: ``path`` a ``BlockLayout`` field (``attn_o_proj``
    or ``mlp_down``), ``basis`` orthonormal [k, d] (``Ablate(r).basis``). Returns ``(module, parameter
    name, edited tensor)`` triples; the model is not touched (``swapped_weights`` puts them in for a
    while). The edit is the one ``orthogonalize`` makes, W ← W − Q Qᵀ W (float32, or float64 for a
    float64 weight), so the module's output equals ``Ablate(basis)`` of it up to float rounding.

    Example:
        edits = ablation_weights(model, [(3, arch.layout(model).mlp_down, Ablate(r).basis)])
        with swapped_weights(edits):
            model.generate(["Hi"])
    """
    conv1d = arch.layout(model).conv1d
    out = []
    with torch.no_grad():
        for layer, path, basis in targets:
            lin = arch.module(model, layer, path)
            w = lin.weight
            work = torch.float64 if w.dtype == torch.float64 else torch.float32
            q = basis.to(w.device, work)
            wf = w.detach().to(work)
            # residual vectors are rows of a GPT-2 Conv1D weight [in, d], columns of a Linear weight [d, in]
            edited = wf - (wf @ q.T) @ q if conv1d else wf - q.T @ (q @ wf)
            out.append((lin, "weight", edited.to(w.dtype)))
            b = getattr(lin, "bias", None)
            if b is not None:
                bf = b.detach().to(work)
                out.append((lin, "bias", (bf - (bf @ q.T) @ q).to(b.dtype)))
    return out


def can_swap(model) -> bool:
    """Whether ``swapped_weights`` is safe here: Hugging Face backend, no norm after the block outputs
    (gemma), weights in memory (not offloaded to meta by accelerate)."""
    if getattr(model, "backend", "hf") != "hf":
        return False
    try:
        if arch.layout(model).post_norms:
            return False
    except InterpError:
        return False
    return not any(p.is_meta for p in model.hf.parameters()) and \
        not any(hasattr(m, "_hf_hook") for m in model.hf.modules())


class swapped_weights:
    """Context manager: put edited tensors in place of module parameters, put the originals back on exit.

    The original ``Parameter`` objects are set aside untouched and restored as they were, so the model's
    weights are bit-identical afterwards, also when the body raises (``KeyboardInterrupt`` included).
    """

    def __init__(self, edits: list[tuple[nn.Module, str, torch.Tensor]]):
        self.edits = edits
        self.saved: list[tuple[nn.Module, str, nn.Parameter]] = []

    def __enter__(self):
        try:
            for mod, name, tensor in self.edits:
                self.saved.append((mod, name, mod._parameters[name]))
                mod._parameters[name] = nn.Parameter(tensor, requires_grad=False)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        while self.saved:
            mod, name, original = self.saved.pop()
            mod._parameters[name] = original
