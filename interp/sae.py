"""SAE interop with SAELens and TransformerLens: save, load, site, features, splice loss.

interp uses SAELens' own ``SAE`` objects. This module is the seam between
them and interp's sites:

- ``save_sae``: SAELens' folder format (``cfg.json`` + safetensors) with the
  config filled as SAELens' training runner fills it: the TransformerLens
  hook name (``blocks.1.hook_resid_post``), ``model_name``,
  ``context_size``, ``prepend_bos``, ``hook_head_index``, ``seqpos_slice``,
  the SAE's ``dtype`` and, for whole ``attn_z`` SAEs,
  ``reshape_activations="hook_z"``. ``sae_lens.SAE.load_from_disk``, its
  ``HookedSAETransformer`` and ``SAETransformerBridge`` then hook the
  right place (an SAE whose hook name is not a TransformerLens name is
  skipped there with only a log warning);
- ``load_sae``: any SAELens-format folder (or a SAELens release + id), its
  hook name mapped to an interp ``Site`` (``sae_site``), checked against the
  model when one is given;
- ``sae_features``: feature activations of prompts through ``interp.capture``;
- ``spliced_loss``: next-token loss clean, with the reconstruction spliced in,
  and with the site zeroed (``interp.evaluation.text_ce``).

The SAE as interventions lives in ``interp.interventions``: ``SAESplice``,
``FeatureAblate`` (error term kept), ``FeatureSteer`` (decoder rows).

Example:
    sae = load_sae("runs/sae_l1/active/sae", model)
    site = sae_site(sae)                                  # Site('resid_post', 1)
    feats = sae_features(model, sae, ["The cat sat."])    # SAEFeatures, values [1, tokens, d_sae]
    with model.intervene({site: FeatureAblate(sae, [12])}):
        ...
    spliced_loss(model, sae, texts)["spliced"]
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from .errors import InterpError
from .sites import Site, SiteLike, parse_site

#: metadata keys SAELens' training runner writes (``LanguageModelSAETrainingRunner._set_sae_metadata``)
RUNNER_KEYS = ("model_name", "hook_name", "hook_head_index", "context_size", "prepend_bos", "seqpos_slice",
               "model_from_pretrained_kwargs", "dataset_path", "model_class_name")


def prepends_bos(model) -> bool:
    """Whether the model's tokenizer puts its BOS token first when encoding plain text (``chat=False``)."""
    tok = model.tokenizer
    bos = getattr(tok, "bos_token_id", None)
    if bos is None:
        return False
    ids = tok("a", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == bos


def sae_metadata(site: SiteLike, model=None, *, context_size: int | None = None, prepend_bos: bool | None = None,
                 hook_head_index: int | None = None, seqpos_slice: tuple | None = None,
                 dataset_path: str | None = None, **extra: Any) -> dict:
    """SAELens metadata for an SAE on ``site`` of ``model`` (keys as SAELens' runner writes them).

    ``model_name`` is interp's model name (a packaged name, a folder or a hub
    id); ``model_source`` and ``model_fingerprint`` say exactly which weights.
    ``prepend_bos`` defaults to what ``model.encode(..., chat=False)`` does.

    Example:
        >>> sae_metadata("resid_post.1", context_size=128)["hook_name"]
        'blocks.1.hook_resid_post'
    """
    s = parse_site(site, model.n_layers if model is not None else None)
    meta: dict[str, Any] = {"hook_name": s.tl_name, "hook_head_index": hook_head_index, "context_size": context_size,
                            "seqpos_slice": list(seqpos_slice) if seqpos_slice is not None else None,
                            "model_from_pretrained_kwargs": {}, "interp_site": str(s)}
    if dataset_path is not None:
        meta["dataset_path"] = dataset_path
    if model is not None:
        meta.update(model_name=model.name, model_source=str(model.source), model_fingerprint=model.fingerprint,
                    model_dtype=str(next(model.hf.parameters()).dtype).removeprefix("torch."),
                    prepend_bos=prepends_bos(model) if prepend_bos is None else prepend_bos)
    else:
        meta["prepend_bos"] = prepend_bos
    meta.update(extra)
    return meta


def apply_metadata(sae, metadata: dict) -> None:
    """Write ``metadata`` (from ``sae_metadata``) into ``sae.cfg.metadata``; a whole-``attn_z`` SAE gets
    SAELens' ``hook_z`` layout."""
    for key, value in metadata.items():
        setattr(sae.cfg.metadata, key, value)
    site = parse_site(metadata["hook_name"])
    if site.name == "attn_z" and metadata.get("hook_head_index") is None:
        sae.cfg.reshape_activations = "hook_z"


def save_sae(sae, path, site: SiteLike | None = None, model=None, **metadata: Any) -> Path:
    """Save an SAE in SAELens' format with its config filled for SAELens and TransformerLens.

    ``site`` defaults to the SAE's own hook name; ``metadata`` goes to
    ``sae_metadata`` (``context_size``, ``prepend_bos``, ``hook_head_index``,
    ``seqpos_slice``, ...). A training SAE is saved as its inference model.
    Returns the folder; ``sae_lens.SAE.load_from_disk(path)`` reads it.

    Example:
        save_sae(sae, "runs/my_sae", "resid_post.1", model, context_size=128)
        SAE.load_from_disk("runs/my_sae").cfg.metadata.hook_name   # 'blocks.1.hook_resid_post'
    """
    if site is None:
        site = sae_site(sae)
    apply_metadata(sae, sae_metadata(site, model, **metadata))
    path = Path(path)
    if hasattr(sae, "save_inference_model"):
        sae.save_inference_model(str(path))
    else:
        sae.save_model(str(path))
    return path


def sae_site(sae, model=None) -> Site:
    """The interp ``Site`` an SAE reads, from its SAELens hook name (TransformerLens names and interp's
    own old ``resid_post.1`` spelling both map).

    Example:
        site = sae_site(sae)          # Site(name='resid_post', layer=1) for blocks.1.hook_resid_post
    """
    name = getattr(getattr(sae.cfg, "metadata", None), "hook_name", None) or getattr(sae.cfg, "hook_name", None)
    if not name:
        raise InterpError("this SAE's config has no hook_name; pass the site explicitly")
    try:
        site = parse_site(name, model.n_layers if model is not None else None)
    except InterpError as e:
        raise InterpError(f"the SAE hooks {name!r}, which is not an interp site ({e})") from None
    if getattr(sae.cfg.metadata, "hook_name_out", None) not in (None, name):
        raise InterpError(f"this is a transcoder ({name} -> {sae.cfg.metadata.hook_name_out}); interp splices "
                          f"SAEs that read and write one site")
    return site


def load_sae(path_or_release, model=None, sae_id: str | None = None, device: str | None = None,
             dtype: str | None = None):
    """Load a SAELens-format SAE folder (``cfg.json`` + weights), or ``release`` + ``sae_id`` from SAELens'
    registry (needs the network or the hub cache); check its site (and width) against ``model``.

    Returns the ``sae_lens`` SAE, on the model's device when a model is given; an SAE saved by an older
    interp (hook name ``resid_post.1``) gets its TransformerLens hook name in memory.

    Example:
        sae = load_sae("runs/sae_l1/active/sae", model)
        sae = load_sae("gpt2-small-res-jb", sae_id="blocks.8.hook_resid_pre")
    """
    from sae_lens import SAE

    dev = device or (str(model.device) if model is not None else "cpu")
    if sae_id is None:
        folder = Path(path_or_release)
        if not (folder / "cfg.json").exists():
            raise InterpError(f"{folder} is not a SAELens SAE folder (no cfg.json); give a folder saved by "
                              f"save_sae / SAELens, or a SAELens release with sae_id=...")
        try:
            sae = SAE.load_from_disk(str(folder), device=dev, dtype=dtype)
        except Exception as e:  # a malformed or truncated folder: say which file, not a traceback
            raise InterpError(f"could not load the SAE in {folder}: {type(e).__name__}: {str(e)[:300]}") from e
    else:
        try:
            sae = SAE.from_pretrained(str(path_or_release), sae_id, device=dev, dtype=dtype or "float32")
        except Exception as e:
            raise InterpError(f"could not load SAELens release {path_or_release!r} / {sae_id!r}: "
                              f"{type(e).__name__}: {str(e)[:300]} (offline? download it once, or give a "
                              f"folder)") from e
    site = sae_site(sae, model)
    if sae.cfg.metadata.hook_name != site.tl_name:  # interp's old spelling ("resid_post.1") hooks nothing in SAELens
        sae.cfg.metadata.hook_name = site.tl_name
    if model is not None:
        from .interventions import SAEView

        SAEView(sae).check(model.site_shape(site), str(site))
    return sae


@dataclass
class SAEFeatures:
    """Feature activations of prompts: ``values`` [examples, positions, features] (zeros where ``mask`` is
    False), ``positions`` the token index of each slot, ``features`` the SAE feature index of each column."""

    values: torch.Tensor
    mask: torch.Tensor
    positions: torch.Tensor
    features: list[int]
    site: str
    metadata: dict = field(default_factory=dict)

    def tokens(self) -> torch.Tensor:
        """The valid rows flattened to [n_tokens, features]."""
        return self.values[self.mask]


@torch.no_grad()
def sae_features(model, sae, prompts: Sequence[str], positions="all", *, features: Sequence[int] | None = None,
                 chat: bool = False, batch_size: int = 8, progress: bool = False) -> SAEFeatures:
    """SAE feature activations at the SAE's site for ``prompts`` (captured with ``model.capture``).

    ``features`` keeps only those columns (the whole dictionary can be large).

    Example:
        f = sae_features(model, sae, ["The cat sat on the mat."], features=[3, 17])
        f.values.shape     # [1, tokens, 2]
    """
    from .interventions import SAEView

    site = sae_site(sae, model)
    view = SAEView(sae)
    view.check(model.site_shape(site), str(site))
    acts = model.capture(prompts, site, positions, chat=chat, batch_size=batch_size, progress=progress)
    x = acts[site]
    keep = list(range(view.d_sae)) if features is None else [int(f) for f in features]
    out = []
    for s in range(0, x.shape[0], batch_size):
        f = view.encode(x[s:s + batch_size].to(model.device)).float()
        out.append(f[..., keep].cpu() if features is not None else f.cpu())
    values = torch.cat(out) * acts.mask[..., None]
    return SAEFeatures(values, acts.mask, acts.positions, keep, str(site), dict(acts.metadata))


#: the fraction of loss recovered is reported only when zero-ablation raises the loss by at least this (nats/token)
RECOVERED_MIN_GAP = 1e-3


@torch.no_grad()
def spliced_loss(model, sae, texts: Sequence[str], site: SiteLike | None = None, batch_size: int = 8) -> dict:
    """Next-token loss (nats/token) clean, with the SAE's reconstruction in place of its site
    (``SAESplice``), and with the site zeroed (``Zero``), through ``model.intervene`` and
    ``interp.evaluation.text_ce``.

    ``loss_recovered`` = (zero − spliced) / (zero − clean) is None, with
    ``loss_recovered_note`` saying why, when zeroing the site does not raise the
    loss (the fraction has no denominator then).

    Example:
        r = spliced_loss(model, load_sae("runs/sae"), texts)
        r["clean"], r["spliced"], r["loss_recovered"]
    """
    from .evaluation import text_ce
    from .interventions import SAESplice, Zero

    key = str(parse_site(site, model.n_layers) if site is not None else sae_site(sae, model))
    was_training = getattr(sae, "training", False)
    sae.eval()
    edits = {"clean": None, "spliced": {key: SAESplice(sae)}, "zero_ablated": {key: Zero()}}
    try:
        out: dict[str, Any] = {name: text_ce(model, texts, iv, batch_size=batch_size) for name, iv in edits.items()}
    finally:
        sae.train(was_training)
    gap = out["zero_ablated"] - out["clean"]
    if gap < RECOVERED_MIN_GAP:
        out["loss_recovered"] = None
        out["loss_recovered_note"] = (f"undefined: zero-ablating {key} changes the loss by {gap:+.4f} nats/token "
                                      f"(< {RECOVERED_MIN_GAP}), so there is no loss to recover")
    else:
        out["loss_recovered"] = (out["zero_ablated"] - out["spliced"]) / gap
    out["site"] = key
    # scored tokens: every next-token pair inside a text (text_ce scores exactly these)
    out["n_tokens"] = sum(max(len(ids) - 1, 0) for ids in model.encode(texts, chat=False).ids)
    return out
