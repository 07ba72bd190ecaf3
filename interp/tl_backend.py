"""The TransformerLens backend: the same ``Model`` interface over a ``TransformerBridge``.

The bridge wraps the very same Hugging Face module (no weight copy) and
exposes TransformerLens hook points (``blocks.3.hook_resid_pre``); interp's
sites map onto them one to one, so captures agree with the HF backend.

Example:
    model = load_model("smollm2-135m-instruct", backend="transformer_lens")
    model.bridge.run_with_cache(...)
"""
from __future__ import annotations

import torch
from torch import nn

from .arch import HookFn, layout_for
from .errors import InterpError
from .model import Model
from .sites import Site


class TLModel(Model):
    """A ``Model`` whose hooks live on TransformerLens hook points."""

    backend = "transformer_lens"

    def __init__(self, bridge, hf: nn.Module, tokenizer, name: str, source: str | None = None):
        self.bridge = bridge
        super().__init__(hf, tokenizer, name, source)

    @classmethod
    def from_hf(cls, hf: nn.Module, tokenizer, name: str, source: str) -> "TLModel":
        from transformer_lens.model_bridge import TransformerBridge

        device = next(hf.parameters()).device
        bridge = TransformerBridge.boot_transformers(source, hf_model=hf, tokenizer=tokenizer, device=device,
                                                     dtype=next(hf.parameters()).dtype)
        return cls(bridge, hf, tokenizer, name, source)

    def _register(self, site: Site, fn: HookFn, prepend: bool = False) -> list:
        point = self.bridge.hook_dict.get(site.tl_name)
        if point is None:
            raise InterpError(f"the TransformerLens bridge has no hook point {site.tl_name}")

        if site.name == "pos_embed" and layout_for(self.config).position_embedding is None:
            raise InterpError(f"{self.architecture} has no learned position embedding (rotary), so no pos_embed site")
        # the bridge may hand hook_z / hook_q / hook_k / hook_v flat [.., heads * d_head]; show heads
        heads = self.site_shape(site)[0] if site.name in ("attn_z", "attn_q", "attn_k", "attn_v") else None

        def hook(module, args, out):
            if heads and out.dim() == 3:
                y = fn(out.unflatten(-1, (heads, self.d_head)))
                return None if y is None else y.flatten(-2)
            return fn(out)

        return [point.register_forward_hook(hook, prepend=prepend)]

    def _block(self, layer: int) -> nn.Module:
        return self.bridge.blocks[layer]

    def num_hooks(self) -> int:
        from .arch import count_hooks

        return count_hooks(self.bridge)

    def _forward(self, batch: dict[str, torch.Tensor], logits: bool = False):
        out = self.bridge(batch["input_ids"], attention_mask=batch["attention_mask"],
                          position_ids=batch["position_ids"], return_type="logits" if logits else None)
        return out if logits else None
