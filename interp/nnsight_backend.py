"""The nnsight backend: the same ``Model`` interface, every forward run as an nnsight trace.

Captures and ``Intervention`` objects are not torch hooks here: ``model.hooks``
only records ``{site: fn}``, and each forward is one ``model.trace(...)``
block (nnsight's ``TransformersModel``) that walks the recorded sites in the
order the model reaches them (block input, ``attn_z``, attention output,
``mlp_act``, MLP output, block output), hands each function the site tensor
and writes back what it returns. Locally that trace runs in-process on the
very same Hugging Face module (no weight copy), so numbers equal the HF
backend's; with ``remote=True`` the same block is shipped to an NDIF server
(nnsight's documented ``trace(..., remote=True)`` path, API key from
``nnsight.CONFIG``), and ``remote="local"`` is nnsight's serverless dry run
of that path (serialize, deserialize with local modules hidden, run here).

A remote trace cannot mutate objects in this process, so functions that only
observe (capture readers) are replayed here on the site values the trace
saved; interventions run on the server and are pure, so replaying them is
harmless.

Example:
    model = load_model("smollm2-135m-instruct", backend="nnsight")
    acts = model.capture(["Hi!"], "resid_post.3")
    with model.intervene({"resid_pre.3": Ablate(r)}):
        logits = model.run(model.pad(model.encode(["Hi!"]).ids))
    big = load_model("meta-llama/Llama-3.1-70B-Instruct", backend="nnsight", remote=True)  # NDIF key needed
"""
from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager
from typing import Iterator, Mapping

import torch
from torch import nn

from .arch import _LAYER_PATHS, BlockLayout, find_layers, layout_for
from .errors import InterpError
from .model import Model
from .sites import Site, SiteLike, parse_site

# where each site's tensor appears inside a block, in the order the forward reaches it:
# (stage rank, path inside the block ("" = the block), "input" or "output")
_STAGES = {
    "resid_pre": (0, "", "input"),
    "mid_pre": (1, None, "input"),  # the attention norm's input: resid_mid's first half
    "attn_z": (2, None, "input"),
    "attn_out": (3, None, "output"),
    "mlp_act": (4, None, "input"),
    "mlp_out": (5, None, "output"),
    "resid_post": (6, "", "output"),
}

REMOTE_HELP = ("remote execution on NDIF needs (1) an NDIF API key, set as the NDIF_API_KEY environment variable or "
               "once with nnsight.CONFIG.set_default_api_key('...') (get one at https://login.ndif.us), and (2) network "
               "access to the NDIF host (nnsight.CONFIG.API.HOST) and to the Hugging Face hub for the model's config "
               "and tokenizer")


def _stage_path(layout: BlockLayout, stage: str) -> str:
    return {"mid_pre": layout.attn_in_norm, "attn_z": layout.attn_o_proj, "attn_out": layout.attn_out,
            "mlp_act": layout.mlp_down, "mlp_out": layout.mlp_out}.get(stage, "")


def _envoy(root, path: str):
    for part in filter(None, path.split(".")):
        root = root[int(part)] if part.isdigit() else getattr(root, part)
    return root


def _first(value):
    return value[0] if isinstance(value, tuple) else value


def _put_first(old, y):
    return (y,) + tuple(old[1:]) if isinstance(old, tuple) else y


def _run_plan(lm, steps: list, stop_path: str | None, tracer, seen: list | None) -> None:
    """Inside a trace: visit each step's location in forward order, apply its functions, write back edits.

    ``steps`` is ``[(layer, envoy path, "input"|"output", heads, [(kind, fn, index), ...]), ...]``; ``kind`` is
    "site" (fn gets the tensor) or "mid" (resid_mid: fn gets norm-input + attention output and its edit goes
    back into the attention output) or "pre" (remember the norm input for "mid"). With ``seen`` (remote), the
    value each function was handed is kept there for replay. Ends with ``tracer.stop()`` after ``stop_path``.
    """
    pre = None
    last = None
    for _, path, attr, heads, fns in steps:
        envoy = _envoy(lm, path)
        raw = envoy.input if attr == "input" else envoy.output
        last = (path, attr)
        x = _first(raw)
        changed = False
        for kind, fn, index in fns:
            if kind == "pre":
                pre = x
                continue
            view = x.unflatten(-1, (heads, -1)) if heads else x
            mid = pre + view if kind == "mid" else None
            arg = mid if kind == "mid" else view
            if seen is not None:
                seen[index] = arg.detach().clone()
            y = fn(arg)
            if y is None:
                continue
            y = view + (y - mid) if kind == "mid" else y
            x = y.flatten(-2) if heads else y
            changed = True
        if changed:
            if attr == "input":
                envoy.input = x
            else:
                envoy.output = _put_first(raw, x)
    if stop_path is not None:
        if last != (stop_path, "output"):
            _envoy(lm, stop_path).output
        tracer.stop()


class NNsightModel(Model):
    """A ``Model`` whose forwards are nnsight traces (locally, or on NDIF with ``remote``)."""

    backend = "nnsight"

    def __init__(self, lm, hf: nn.Module, tokenizer, name: str, source: str | None = None,
                 remote: bool | str = False):
        self.lm = lm
        self.remote = remote
        self._plan: list[tuple[object, Site, object]] = []  # (token, site, fn) in hook order
        self._stops: list[tuple[object, int]] = []
        self._tracing = False
        self._guard = None
        super().__init__(hf, tokenizer, name, source)
        self._layout = layout_for(hf.config)
        self._layers_path = next(p for p in _LAYER_PATHS if _has(hf, p))

    @classmethod
    def from_hf(cls, hf: nn.Module, tokenizer, name: str, source: str, remote: bool | str = False) -> "NNsightModel":
        """Wrap an already loaded HF causal LM (no weight copy) in nnsight's ``TransformersModel``."""
        from nnsight import TransformersModel

        lm = TransformersModel(hf, tokenizer=tokenizer, task="text-generation")
        return cls(lm, hf, tokenizer, name, source, remote)

    # --------------------------------------------------------------- remote facts
    @property
    def device(self) -> torch.device:
        if self.remote is True:  # the local copy is an empty (meta) shell; inputs travel from the CPU
            return torch.device("cpu")
        return super().device

    @property
    def fingerprint(self) -> str:
        if self.remote is not True:
            return super().fingerprint
        if self._fingerprint is None:  # no weights here: the config and the server's model key name the model
            cfg = {k: v for k, v in self.hf.config.to_dict().items()
                   if not k.startswith("_") and k != "transformers_version"}
            h = hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode() + self.source.encode())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    # ---------------------------------------------------------------- hooks
    def num_hooks(self) -> int:
        from .arch import count_hooks

        return count_hooks(self.hf) + len(self._plan)

    def _register(self, site: Site, fn, prepend: bool = False) -> list:
        """Record ``fn`` at ``site`` for the next traces (no torch hook); the handle's ``remove`` forgets it."""
        entry = (object(), site, fn)
        if prepend:
            self._plan.insert(0, entry)
        else:
            self._plan.append(entry)
        self._set_guard()
        return [_Handle(self, entry)]

    @contextmanager
    def hooks(self, fns: Mapping[SiteLike, object], stop_after_layer: int | None = None,
              prepend: bool = False) -> Iterator[None]:
        """Record ``fn(tensor) -> tensor | None`` at each site; the next traces apply them (see module doc)."""
        handles: list = []
        stop = (object(), stop_after_layer)
        try:
            for site, fn in fns.items():
                handles += self._register(parse_site(site, self.n_layers), fn, prepend)
            if stop_after_layer is not None:
                self._stops.append(stop)
            yield
        finally:
            for h in handles:
                h.remove()
            self._stops = [s for s in self._stops if s is not stop]

    def _set_guard(self) -> None:
        """While sites are recorded, a forward that bypasses the trace (generate, a raw hf call) would
        silently ignore them: refuse it instead."""
        if self._plan and self._guard is None:
            def refuse(module, args, kwargs):
                if not self._tracing:
                    raise InterpError("on the nnsight backend, captures and interventions apply to model.capture, "
                                      "run_with_cache, run and last_logits(batch); this call (generation or a direct "
                                      "model.hf forward) would ignore them: load the model with backend='hf' for it")
            self._guard = self.hf.base_model.register_forward_pre_hook(refuse, with_kwargs=True)
        elif not self._plan and self._guard is not None:
            self._guard.remove()
            self._guard = None

    def _steps(self) -> tuple[list, list]:
        """The recorded sites as trace steps in forward order, and the (index, fn) list for replay."""
        groups: dict[tuple[int, int], tuple[int, str, str, int | None, list]] = {}
        calls = []

        def step(layer: int, stage: str):
            rank, _, attr = _STAGES[stage]
            key = (layer, rank)
            if key not in groups:
                sub = _stage_path(self._layout, stage)
                path = f"{self._layers_path}.{layer}" + (f".{sub}" if sub else "")
                groups[key] = (layer, path, attr, self.n_heads if stage == "attn_z" else None, [])
            return groups[key][4]

        for _, site, fn in self._plan:
            if site.name not in _STAGES and site.name != "resid_mid" or site.layer is None:
                raise InterpError(f"site {site} is not available on the nnsight backend yet; it has "
                                  f"{', '.join(n for n in _STAGES if n != 'mid_pre')} and resid_mid "
                                  f"(load with backend='hf' for the others)")
            if site.name == "resid_mid":
                pre = step(site.layer, "mid_pre")
                if not pre:
                    pre.append(("pre", None, None))
                kind, stage = "mid", "attn_out"
            else:
                kind, stage = "site", site.name
            step(site.layer, stage).append((kind, fn, len(calls)))
            calls.append(fn)
        return [groups[k] for k in sorted(groups)], calls

    # ---------------------------------------------------------------- forward
    def _forward(self, batch: dict[str, torch.Tensor], logits: bool = False):
        """One forward as an nnsight trace applying the recorded sites; logits only when asked."""
        import nnsight

        steps, calls = self._steps()
        # without logits the trace ends after the last block asked for (or the last block: no LM head)
        stop = min([layer for _, layer in self._stops] or [self.n_layers - 1])
        stop_path = None if logits else f"{self._layers_path}.{stop}"
        if stop_path is not None:  # sites past the stop cannot change what is read at or before it
            steps = [s for s in steps if s[0] <= stop]
        state = self._intervention_state
        if state is not None:  # the context (padding, prompt positions) travels with the trace, also remotely
            from .intervene import _context

            state["ctx"] = _context(state, (), batch)
        remote = self.remote
        seen = [None] * len(calls) if remote else None
        lm, inputs, out = self.lm, dict(batch), None
        self._tracing = True
        try:
            with torch.no_grad(), _remote_errors(remote):
                with lm.trace(inputs, remote=remote) as tracer:
                    if seen is not None:
                        seen = nnsight.save(seen)
                    _run_plan(lm, steps, stop_path, tracer, seen)
                    if logits:
                        out = nnsight.save(lm.output.logits)
        finally:
            self._tracing = False
        if seen is not None:  # a remote trace mutated copies: replay every function here for its side effects
            for fn, value in zip(calls, seen):
                if value is not None:
                    fn(value)
        return out if logits else None

    def last_logits(self, batch: dict[str, torch.Tensor], start_layer: int = 0,
                    resid: torch.Tensor | None = None, cache=None) -> torch.Tensor:
        """Next-token logits at the last position, through the trace (no block skipping or KV cache here)."""
        if resid is not None or cache is not None:
            raise InterpError("the nnsight backend runs whole forwards: last_logits takes no resid or cache; "
                              "use backend='hf' for the layer-skipping and prefix-cache fast paths")
        with torch.no_grad():
            return self._forward(batch, logits=True)[:, -1]

    def prefix_cache(self, prefix_ids):
        raise InterpError("prefix_cache is a backend='hf' fast path; the nnsight backend runs whole forwards")


class _Handle:
    """What ``_register`` returns: ``remove()`` takes its function out of the plan, like a torch hook handle."""

    def __init__(self, model: NNsightModel, entry: tuple):
        self.model, self.entry = model, entry

    def remove(self) -> None:
        self.model._plan = [e for e in self.model._plan if e is not self.entry]
        self.model._set_guard()


def _has(root: nn.Module, path: str) -> bool:
    try:
        for part in path.split("."):
            root = getattr(root, part)
    except AttributeError:
        return False
    return isinstance(root, nn.ModuleList)


def _api_key() -> str | None:
    from nnsight import CONFIG

    return os.environ.get("NDIF_API_KEY") or CONFIG.API.APIKEY


@contextmanager
def _remote_errors(remote):
    """Turn a failed remote request (no key, no network, server refusal) into an InterpError naming the fix."""
    if remote is not True:
        yield
        return
    if not _api_key():
        raise InterpError(f"no NDIF API key is configured; {REMOTE_HELP}")
    try:
        yield
    except InterpError:
        raise
    except Exception as e:  # httpx/websocket/hub errors and nnsight's RemoteError have no common base
        raise InterpError(f"the remote (NDIF) request failed: {type(e).__name__}: {str(e)[:300]}. "
                          f"{REMOTE_HELP}") from e


def load_remote(hub_id: str, trust_remote_code: bool = False) -> NNsightModel:
    """A model that runs on NDIF: config and tokenizer here, weights only on the server.

    Example:
        model = load_remote("meta-llama/Llama-3.1-70B-Instruct")   # NDIF_API_KEY set, online
        acts = model.capture(["Hi!"], "resid_post.40")
    """
    if not _api_key():
        raise InterpError(f"no NDIF API key is configured; {REMOTE_HELP}")
    from transformers import AutoTokenizer

    from nnsight import TransformersModel

    try:
        tokenizer = AutoTokenizer.from_pretrained(hub_id, trust_remote_code=trust_remote_code)
        lm = TransformersModel(hub_id, task="text-generation", tokenizer=tokenizer,
                               trust_remote_code=trust_remote_code)  # meta weights: nothing is downloaded
        lm.to_model_key()  # the hub's canonical id, the name NDIF knows the model by
    except Exception as e:
        raise InterpError(f"could not prepare {hub_id!r} for remote execution: {type(e).__name__}: "
                          f"{str(e)[:300]}. {REMOTE_HELP}") from e
    hf = lm._module
    find_layers(hf)  # an architecture interp cannot place sites in fails here, before any request
    return NNsightModel(lm, hf, tokenizer, hub_id, hub_id, remote=True)
