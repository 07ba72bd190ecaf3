"""``Model``: a causal LM plus its tokenizer, chat template and named sites.

One interface over two backends: plain Hugging Face transformers (default)
and a TransformerLens ``TransformerBridge`` (``tl_backend.py``). Both expose
the same sites and the same ``capture``; only hook registration and the
forward call differ.

Example:
    model = load_model("smollm2-135m-instruct")
    acts = model.capture(["Hi!"], sites="resid_post", positions="last")
    acts["resid_post.3"].shape
    torch.Size([1, 1, 576])
"""
from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Mapping, Sequence

import torch
from torch import nn

from .arch import HookFn, StopForward, count_hooks, find_layers, layout_for, register_site_hook
from .errors import InterpError
from .prefix import cache_arg as _cache_arg
from .sites import Site, SiteLike, parse_site


@dataclass
class Encoded:
    """Tokenized prompts before padding."""

    texts: list[str]
    ids: list[list[int]]
    spans: list[tuple[int, int] | None]  # token range of the user text, when chat-formatted

    @property
    def lengths(self) -> list[int]:
        return [len(x) for x in self.ids]


class Model:
    """A causal language model with named sites (see ``interp.sites``).

    Build one with ``interp.load_model``. ``hf`` is the underlying
    transformers model, ``tokenizer`` its tokenizer (left padding).
    """

    backend = "hf"

    def __init__(self, hf: nn.Module, tokenizer, name: str, source: str | None = None):
        self.hf = hf.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.source = source or name
        cfg = hf.config
        self.config = cfg
        self._layers = find_layers(hf)
        self.n_layers = len(self._layers)
        self.d_model = cfg.hidden_size if hasattr(cfg, "hidden_size") else cfg.n_embd
        self.n_heads = getattr(cfg, "num_attention_heads", None) or cfg.n_head
        self.d_head = getattr(cfg, "head_dim", None) or self.d_model // self.n_heads
        self.d_mlp = getattr(cfg, "intermediate_size", None) or getattr(cfg, "n_inner", None) or 4 * self.d_model
        self.max_context = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
        self.architecture = cfg.model_type
        self._layout = layout_for(cfg) if self.backend == "hf" else None
        tokenizer.padding_side = "left"
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self._fingerprint: str | None = None
        self._intervention_state: dict | None = None

    def __repr__(self) -> str:
        return (f"Model({self.name!r}, backend={self.backend}, arch={self.architecture}, layers={self.n_layers}, "
                f"d_model={self.d_model})")

    # ----------------------------------------------------------------- basics
    @property
    def device(self) -> torch.device:
        """Where inputs go: the input embedding's device (its execution device on an accelerate-dispatched model)."""
        from .offload import input_device

        return input_device(self.hf)

    @property
    def dtype(self) -> torch.dtype:
        """The weights' dtype (of the first parameter; ``load_model(dtype=...)`` loads them all alike)."""
        return next(self.hf.parameters()).dtype

    @property
    def fingerprint(self) -> str:
        """A hash of config and weights: tells apart models and edited copies."""
        if self._fingerprint is None:
            # the config minus where it was loaded from, then a cheap summary of every tensor
            cfg = {k: v for k, v in self.hf.config.to_dict().items()
                   if not k.startswith("_") and k != "transformers_version"}
            h = hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode())
            from .offload import named_tensors

            with torch.no_grad():  # offloaded weights are read from where accelerate keeps them
                for name, p in named_tensors(self.hf):
                    flat = p.detach().flatten()
                    h.update(f"{name}{tuple(p.shape)}{flat.double().sum().item():.6e}"
                             f"{flat[:64].double().abs().sum().item():.6e}".encode())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    def site_shape(self, site: SiteLike) -> tuple[int, ...]:
        """Trailing shape of a site's tensor: (d,), (heads, d_head) for attn_z/attn_q, (kv_heads, d_head)
        for attn_k/attn_v, (heads, -1) for attn_pattern (the key count depends on the input)."""
        s = parse_site(site, self.n_layers)
        if s.name in ("attn_z", "attn_q"):
            return (self.n_heads, self.d_head)
        if s.name in ("attn_k", "attn_v"):
            return (getattr(self.config, "num_key_value_heads", None) or self.n_heads, self.d_head)
        if s.name == "attn_pattern":
            return (self.n_heads, -1)
        if s.name == "mlp_act":
            return (self.d_mlp,)
        return (self.d_model,)

    def sites(self, names: Sequence[str] | None = None) -> list[Site]:
        """Every site of this model (optionally only some names)."""
        from .sites import SITE_NAMES, all_sites

        return all_sites(self.n_layers, names or SITE_NAMES)

    # -------------------------------------------------------------- tokenizing
    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    # rendered in the user's place to find where the template puts the user text; never appears in real prompts
    _SENTINEL = "\ue000interp-user-text\ue001"

    def format_chat(self, instruction: str, system: str | None = None) -> tuple[str, tuple[int, int]]:
        """The chat-formatted prompt and the character span of the instruction.

        The span is found by rendering the template a second time with a
        sentinel in place of the instruction: the text before and after the
        sentinel is the template's own, so the instruction is what lies
        between them. Searching the rendered string instead would find an
        instruction such as "assistant" inside the template's tail.

        Example:
            >>> from interp.testing import tiny_model
            >>> text, (a, b) = tiny_model().format_chat("assistant")
            >>> text[:a], text[a:b]
            ('<|im_start|>user\\n', 'assistant')
        """
        if not self.has_chat_template:
            raise InterpError(f"model {self.name} has no chat template; pass chat=False or set "
                              f"model.tokenizer.chat_template")
        if system is not None and not isinstance(system, str):
            raise InterpError(f"system must be a string or None, got {type(system).__name__}")

        def render(content: str) -> str:
            messages = ([{"role": "system", "content": system}] if system is not None else []) + \
                [{"role": "user", "content": content}]
            try:
                return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            except Exception as e:  # jinja errors from the template itself (e.g. it rejects a system role)
                raise InterpError(f"the chat template of {self.name} failed on this prompt ({type(e).__name__}: "
                                  f"{e}); pass chat=False or system=None") from e

        text = render(instruction)
        probe = render(self._SENTINEL)
        cut = probe.find(self._SENTINEL)
        if cut < 0 or probe.count(self._SENTINEL) != 1:
            raise InterpError("the chat template does not render the user text verbatim exactly once; cannot "
                              "locate the instruction (pass chat=False and format the prompt yourself)")
        head, tail = probe[:cut], probe[cut + len(self._SENTINEL):]
        if not (text.startswith(head) and text.endswith(tail) and len(head) + len(tail) <= len(text)):
            raise InterpError("the chat template renders its own text differently for this instruction; cannot "
                              "locate the instruction (pass chat=False and format the prompt yourself)")
        # a template that trims or escapes the content still puts it between the same head and tail
        return text, (len(head), len(text) - len(tail))

    def encode(self, prompts: Sequence[str], chat: bool = True, system: str | None = None) -> Encoded:
        """Tokenize prompts (chat-formatted when ``chat``), checking length and content.

        ``prompts`` is a string or any iterable of strings (a list, a tuple, a
        generator). The instruction span covers exactly the tokens that
        overlap the user's text.
        """
        if isinstance(prompts, str):
            prompts = [prompts]
        if prompts is None or isinstance(prompts, (bytes, dict)) or not hasattr(prompts, "__iter__"):
            raise InterpError(f"prompts must be a string or a list of strings, got {type(prompts).__name__}")
        prompts = list(prompts)
        if len(prompts) == 0:
            raise InterpError("the prompt list is empty")
        texts, ids, spans = [], [], []
        for i, p in enumerate(prompts):
            if not isinstance(p, str) or not p.strip():
                raise InterpError(f"prompt {i} is empty or not a string: {p!r}")
            try:
                p.encode("utf-8")
            except UnicodeEncodeError as e:
                raise InterpError(f"prompt {i} is not valid text ({e.reason} at character {e.start}, "
                                  f"{p[e.start:e.end]!r}); lone surrogates usually come from a bad decode") from e
            if chat:
                text, (cs, ce) = self.format_chat(p, system)
                enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
                inside = [t for t, (a, b) in enumerate(enc["offset_mapping"]) if b > a and a < ce and b > cs]
                if not inside:
                    raise InterpError(f"prompt {i} tokenized to no instruction tokens: {p!r}")
                spans.append((inside[0], inside[-1] + 1))
                tok_ids = enc["input_ids"]
            else:
                text = p
                tok_ids = self.tokenizer(p, add_special_tokens=True)["input_ids"]
                spans.append(None)
            if self.max_context and len(tok_ids) > self.max_context:
                raise InterpError(f"prompt {i} has {len(tok_ids)} tokens, more than the model's context of "
                                  f"{self.max_context}; shorten it")
            texts.append(text)
            ids.append(list(tok_ids))
        return Encoded(texts, ids, spans)

    def pad(self, ids: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
        """Left-pad token lists into input_ids, attention_mask and position_ids."""
        width = max(len(x) for x in ids)
        pad_id = self.tokenizer.pad_token_id
        input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for i, x in enumerate(ids):
            if len(x):
                input_ids[i, width - len(x):] = torch.tensor(x, dtype=torch.long)
                mask[i, width - len(x):] = 1
        # positions count real tokens only, so a prompt reads the same alone or padded
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        dev = self.device
        return {"input_ids": input_ids.to(dev), "attention_mask": mask.to(dev), "position_ids": position_ids.to(dev)}

    # ------------------------------------------------------------------ hooks
    def _register(self, site: Site, fn: HookFn, prepend: bool = False) -> list:
        return register_site_hook(self, site, fn, prepend)

    def _block(self, layer: int) -> nn.Module:
        return self._layers[layer]

    def num_hooks(self) -> int:
        """How many forward hooks are attached anywhere in the model."""
        return count_hooks(self.hf)

    @contextmanager
    def hooks(self, fns: Mapping[SiteLike, HookFn], stop_after_layer: int | None = None,
              prepend: bool = False) -> Iterator[None]:
        """Attach ``fn(tensor) -> tensor | None`` at each site for the block's duration.

        Hooks are removed on exit, also when the body raises. With
        ``stop_after_layer`` the forward stops once that block has run; with
        ``prepend`` these hooks run before ones already attached.
        """
        handles: list = []
        try:
            for site, fn in fns.items():
                handles += self._register(parse_site(site, self.n_layers), fn, prepend)
            if stop_after_layer is not None and stop_after_layer < self.n_layers - 1:
                def stop(module, args, out):
                    raise StopForward
                handles.append(self._block(stop_after_layer).register_forward_hook(stop))
            yield
        finally:
            for h in handles:
                h.remove()

    def _forward(self, batch: dict[str, torch.Tensor], logits: bool = False):
        """One forward pass; the LM head is skipped unless ``logits``."""
        net = self.hf if logits else self.hf.base_model
        out = net(**batch, use_cache=False)
        return out.logits if logits else None

    def run(self, batch: dict[str, torch.Tensor], cache=None) -> torch.Tensor:
        """Logits for a padded batch (see ``pad``), under whatever hooks are attached.

        With ``cache`` (a shared prefix's KV cache, ``interp.prefix``) the batch holds the tokens after
        the prefix and the logits are theirs.
        """
        with torch.no_grad():
            if cache is None:
                return self._forward(batch, logits=True)
            return self.hf(**batch, use_cache=True, **{_cache_arg(self.hf): cache}).logits

    def final_hidden(self, batch: dict[str, torch.Tensor], cache=None) -> torch.Tensor:
        """The final-norm hidden states [batch, seq, d] of a padded batch, under attached hooks, without the LM
        head: unembed only the positions you need (``unembed``), which on a 151k-token vocabulary is most of
        a forward's memory. ``cache`` as in ``run``."""
        base = self.hf.base_model
        kv = {} if cache is None else {_cache_arg(base): cache}
        with torch.no_grad():
            return base(**batch, use_cache=cache is not None, **kv).last_hidden_state

    def unembed(self, h: torch.Tensor) -> torch.Tensor:
        """Logits from final hidden states (after the final norm), with the model's logit soft-capping.

        Example:
            logits = model.unembed(cache["resid_post.23"])   # only after the final norm: see logit lens
        """
        return self._unembed(h)

    def _unembed(self, h: torch.Tensor) -> torch.Tensor:
        head = self.hf.get_output_embeddings()
        w = head.weight
        # a float32 capture kept on the CPU meets a bf16 head on a GPU: match it (an offloaded head moves it itself)
        h = h.to(dtype=w.dtype) if w.is_meta else h.to(w.device, w.dtype)
        logits = head(h)
        cap = getattr(self.config, "final_logit_softcapping", None)
        return torch.tanh(logits / cap) * cap if cap else logits

    def last_logits(self, batch: dict[str, torch.Tensor], start_layer: int = 0,
                    resid: torch.Tensor | None = None, cache=None) -> torch.Tensor:
        """Next-token logits at the last position [batch, vocab], under attached hooks.

        The unembedding runs on the last position only. With ``start_layer``
        and ``resid`` (the cached ``resid_pre`` of that layer, [batch, seq,
        d]) the blocks below ``start_layer`` are skipped: they cannot change
        when edits start at ``start_layer``, so their output can be reused.
        With ``cache`` (a transformers KV cache of a shared prompt prefix, see
        ``prefix_cache``) ``batch`` holds only the tokens after the prefix,
        its attention mask spans prefix and suffix, and the cache is extended
        in place.
        """
        base = self.hf.base_model
        kv = {} if cache is None else {_cache_arg(base): cache}
        with torch.no_grad():
            if resid is None:
                h = base(**batch, use_cache=cache is not None, **kv).last_hidden_state
            elif hasattr(base, "layers") and hasattr(base, "rotary_emb") and self.backend == "hf":
                h = self._run_upper_blocks(base, start_layer, resid, batch, kv)
            else:  # no fast path for this architecture: replace the block input, run everything
                def replace(x):
                    return resid.to(x.device, x.dtype)
                with self.hooks({Site("resid_pre", start_layer): replace}, prepend=True):
                    h = base(**batch, use_cache=cache is not None, **kv).last_hidden_state
            return self._unembed(h[:, -1])

    def prefix_cache(self, prefix_ids: Sequence[int], copies: int = 1):
        """The KV cache of one token prefix (batch 1), under attached hooks, for ``last_logits(cache=...)``.

        Prompts that share a prefix (a chat template's system prompt) can skip
        recomputing it: copy the cache, repeat it to the batch size
        (``cache.batch_repeat_interleave``) and pass the suffixes. ``copies`` runs
        the prefix as that many rows, e.g. each under its own per-row intervention.
        """
        base = self.hf.base_model
        with torch.no_grad():
            out = base(input_ids=torch.tensor([list(prefix_ids)] * copies, device=self.device), use_cache=True)
        return getattr(out, "cache", None) or out.past_key_values

    def _run_upper_blocks(self, base, start: int, resid: torch.Tensor, batch, kv: dict) -> torch.Tensor:
        """Run blocks ``start``.. on ``resid`` by handing the base model a shortened block list."""
        layers, types = base.layers, getattr(base.config, "layer_types", None)
        try:
            base.layers = nn.ModuleList(list(layers)[start:])
            if types is not None:
                base.config.layer_types = list(types)[start:]
            # attention modules keep their absolute layer index, so a full-depth KV cache still lines up
            resid = resid.to(self.device, base.get_input_embeddings().weight.dtype)
            return base(inputs_embeds=resid, attention_mask=batch["attention_mask"],
                        position_ids=batch["position_ids"], use_cache=bool(kv), **kv).last_hidden_state
        finally:
            base.layers = layers
            if types is not None:
                base.config.layer_types = types

    # ----------------------------------------------------------------- capture
    def capture(self, prompts: Sequence[str], sites: SiteLike | Sequence[SiteLike] = "resid_post",
                positions="last", *, chat: bool = True, system: str | None = None, batch_size: int = 8,
                dtype: torch.dtype = torch.float32, progress: bool = True, share_prefix: bool = False,
                score=None):
        """Run prompts through the model and keep activations at sites and positions.

        Returns ``Activations`` with tensors [examples, positions, d] per site
        (in prompt order). Padding is never captured. ``share_prefix`` runs the
        prompts' shared token prefix once; ``score(last_logits)`` values per
        prompt come back in ``acts.scores`` (see ``interp.capture.capture``).

        Example:
            acts = model.capture(["Hello"], ["resid_pre.0", "blocks.1.attn.hook_z"])
        """
        from .capture import capture

        return capture(self, prompts, sites, positions, chat=chat, system=system, batch_size=batch_size,
                       dtype=dtype, progress=progress, share_prefix=share_prefix, score=score)

    def run_with_cache(self, inputs, sites: SiteLike | Sequence[SiteLike] = "resid_post", **kwargs):
        """Logits and every position of each site for one padded batch (see ``interp.capture.run_with_cache``).

        Example:
            cache = model.run_with_cache(["Hi!"], ["resid_pre.0", "attn_out.0"])
            cache.logits.shape, cache["resid_pre.0"].shape
        """
        from .capture import run_with_cache

        return run_with_cache(self, inputs, sites, **kwargs)

    def capture_to_store(self, prompts: Sequence[str], out_dir, sites: SiteLike | Sequence[SiteLike] = "resid_post",
                         positions="last", **kwargs):
        """Stream a capture to disk as an ``ActivationStore`` (resumable); see ``interp.store``."""
        from .store import capture_to_store

        return capture_to_store(self, prompts, out_dir, sites, positions, **kwargs)

    def describe(self) -> dict:
        return {"model": self.name, "source": self.source, "backend": self.backend,
                "architecture": self.architecture, "n_layers": self.n_layers, "d_model": self.d_model,
                "dtype": str(self.dtype).replace("torch.", ""), "fingerprint": self.fingerprint}

    # ---------------------------------------------------------- interventions
    def intervene(self, interventions):
        """Context manager applying ``{site: Intervention}`` to every forward (see ``interp.intervene``)."""
        from .intervene import intervene

        return intervene(self, interventions)

    def generate(self, prompts: Sequence[str], max_new_tokens: int = 64, **kwargs) -> list[str]:
        """Greedy chat completions (see ``interp.generation.generate``)."""
        from .generation import generate

        return generate(self, prompts, max_new_tokens=max_new_tokens, **kwargs)
