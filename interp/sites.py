"""Named activation sites and where they live in each architecture.

A site is a (name, layer) pair such as ``resid_post.5``. Every public function
that takes a site also accepts the TransformerLens hook name
(``blocks.5.hook_resid_post``) and a ``Site`` object. Three sites sit outside
the blocks and have no layer (``layer=None``): ``embed`` (``hook_embed``),
``pos_embed`` (``hook_pos_embed``, learned position embeddings only) and
``ln_final`` (``ln_final.hook_normalized``).

Example:
    >>> parse_site("blocks.3.attn.hook_z", n_layers=12)
    Site(name='attn_z', layer=3)
    >>> parse_site("hook_embed")
    Site(name='embed', layer=None)
"""
from __future__ import annotations

import numbers
import re
from dataclasses import dataclass
from typing import Iterable, Sequence, Union

from .errors import InterpError

#: Canonical site names, in the order data flows through a block.
SITE_NAMES: tuple[str, ...] = (
    "resid_pre",  # block input
    "attn_z",  # per-head attention output before the output projection [.., heads, d_head]
    "attn_out",  # attention output as added to the residual stream
    "resid_mid",  # residual stream between attention and MLP
    "mlp_act",  # MLP hidden activation: input to the down projection
    "mlp_out",  # MLP output as added to the residual stream
    "resid_post",  # block output
)

#: More per-layer sites (issue 21). Kept apart from ``SITE_NAMES``, which lists the sites an experiment
#: sweeps (each a [.., d] vector, or heads for attn_z); these are read or edited by name.
EXTRA_SITE_NAMES: tuple[str, ...] = (
    "ln1",  # the attention's normalized input: output of the block's first norm (weight applied), [.., d]
    "attn_q",  # queries per head, projection output before any q-norm and rotary embedding [.., heads, d_head]
    "attn_k",  # keys per KV head (GQA: the model's num_key_value_heads, not repeated) [.., kv_heads, d_head]
    "attn_v",  # values per KV head, as attn_k [.., kv_heads, d_head]
    "attn_pattern",  # attention probabilities [batch, heads, query, key]; read-only, needs eager attention
    "ln2",  # the MLP's normalized input: output of the norm in front of the MLP, [.., d]
)

#: Sites outside the blocks: they have no layer.
GLOBAL_SITE_NAMES: tuple[str, ...] = (
    "embed",  # token embedding as the model adds it (Gemma: already scaled by sqrt(d_model))
    "pos_embed",  # learned absolute position embedding (GPT-2); rotary models have none
    "ln_final",  # output of the final norm, the input of the unembedding
)

#: Every per-layer site name.
LAYER_SITE_NAMES: tuple[str, ...] = SITE_NAMES + EXTRA_SITE_NAMES
#: Every site name.
ALL_SITE_NAMES: tuple[str, ...] = GLOBAL_SITE_NAMES + LAYER_SITE_NAMES

#: TransformerLens hook-name suffixes for each site.
TL_SUFFIX: dict[str, str] = {
    "resid_pre": "hook_resid_pre",
    "resid_mid": "hook_resid_mid",
    "resid_post": "hook_resid_post",
    "attn_out": "hook_attn_out",
    "mlp_out": "hook_mlp_out",
    "mlp_act": "mlp.hook_post",
    "attn_z": "attn.hook_z",
    "ln1": "ln1.hook_normalized",
    "ln2": "ln2.hook_normalized",
    "attn_q": "attn.hook_q",
    "attn_k": "attn.hook_k",
    "attn_v": "attn.hook_v",
    "attn_pattern": "attn.hook_pattern",
}
#: TransformerLens hook names of the sites without a layer.
TL_GLOBAL: dict[str, str] = {"embed": "hook_embed", "pos_embed": "hook_pos_embed",
                             "ln_final": "ln_final.hook_normalized"}
_TL_TO_NAME = {v: k for k, v in TL_SUFFIX.items()}
_TL_GLOBAL_TO_NAME = {v: k for k, v in TL_GLOBAL.items()}
_TL_RE = re.compile(r"^blocks\.(\d+)\.(.+)$")
_CANON_RE = re.compile(r"^([a-z][a-z_0-9]*)[.:/](\d+)$")


@dataclass(frozen=True, order=True)
class Site:
    """One hook site: a canonical name and a layer index (None for ``embed``, ``pos_embed``, ``ln_final``)."""

    name: str
    layer: int | None

    def __str__(self) -> str:
        return self.name if self.layer is None else f"{self.name}.{self.layer}"

    @property
    def tl_name(self) -> str:
        """The TransformerLens hook name for this site."""
        if self.layer is None:
            return TL_GLOBAL[self.name]
        return f"blocks.{self.layer}.{TL_SUFFIX[self.name]}"


SiteLike = Union[str, Site, tuple]


def _valid_sites_message(n_layers: int | None) -> str:
    layers = f"layers 0..{n_layers - 1}" if n_layers else "any layer"
    return (
        f"valid site names: {', '.join(SITE_NAMES)} ({layers}), written as 'resid_post.5', "
        f"('resid_post', 5) or a TransformerLens name such as 'blocks.5.hook_resid_post' "
        f"(suffixes: {', '.join(TL_SUFFIX.values())}); more per-layer sites: {', '.join(EXTRA_SITE_NAMES)}; "
        f"outside the blocks, without a layer: {', '.join(GLOBAL_SITE_NAMES)} "
        f"({', '.join(TL_GLOBAL.values())})"
    )


def parse_site(site: SiteLike, n_layers: int | None = None) -> Site:
    """Turn any accepted spelling of one site into a ``Site``.

    Raises ``InterpError`` listing the valid names when the site is unknown or
    its layer is out of range.
    """
    if isinstance(site, Site):
        name, layer = site.name, site.layer
    elif isinstance(site, tuple) and len(site) == 2:
        name, layer = site
    elif isinstance(site, str) and (site in GLOBAL_SITE_NAMES or site in _TL_GLOBAL_TO_NAME):
        name, layer = _TL_GLOBAL_TO_NAME.get(site, site), None
    elif isinstance(site, str):
        m = _TL_RE.match(site)
        if m and m.group(2) in _TL_TO_NAME:
            name, layer = _TL_TO_NAME[m.group(2)], int(m.group(1))
        else:
            m = _CANON_RE.match(site)
            if not m:
                raise InterpError(f"unknown site {site!r}; {_valid_sites_message(n_layers)}")
            name, layer = m.group(1), int(m.group(2))
    else:
        raise InterpError(f"a site must be a string, a (name, layer) tuple or a Site, got {type(site).__name__}")
    if isinstance(name, str) and name in GLOBAL_SITE_NAMES:
        if layer is not None:
            raise InterpError(f"site {name} lies outside the blocks and has no layer; write {name!r} "
                              f"(or {TL_GLOBAL[name]!r}), not {name}.{layer}")
        return Site(name, None)
    if not isinstance(name, str) or name not in LAYER_SITE_NAMES:
        raise InterpError(f"unknown site name {name!r}; {_valid_sites_message(n_layers)}")
    # a float (1.7) or bool layer is a mistake, not layer 1: only whole integers count
    if isinstance(layer, bool) or not isinstance(layer, numbers.Integral):
        raise InterpError(f"site {name}: layer {layer!r} is not an integer; {_valid_sites_message(n_layers)}")
    layer = int(layer)
    if n_layers is not None and not (0 <= layer < n_layers):
        raise InterpError(f"site {name}.{layer}: layer out of range; {_valid_sites_message(n_layers)}")
    return Site(name, layer)


def expand_sites(sites: SiteLike | Iterable[SiteLike], n_layers: int) -> list[Site]:
    """Parse a site or list of sites; a bare name (``"resid_post"``) means every layer.

    Example:
        >>> [str(s) for s in expand_sites(["attn_out", "resid_pre.0"], n_layers=2)]
        ['attn_out.0', 'attn_out.1', 'resid_pre.0']
    """
    if isinstance(sites, (str, Site)) or (isinstance(sites, tuple) and len(sites) == 2 and isinstance(sites[0], str)
                                          and not isinstance(sites[1], (str, Site, tuple))):
        sites = [sites]
    if sites is None or not isinstance(sites, Iterable):
        raise InterpError(f"sites must be a site or a list of sites, got {sites!r}; {_valid_sites_message(n_layers)}")
    out: list[Site] = []
    for s in sites:
        if isinstance(s, str) and s in LAYER_SITE_NAMES:
            out.extend(Site(s, layer) for layer in range(n_layers))
        else:
            out.append(parse_site(s, n_layers))
    if not out:
        raise InterpError(f"no sites given; {_valid_sites_message(n_layers)}")
    seen: dict[Site, None] = dict.fromkeys(out)
    return list(seen)


def all_sites(n_layers: int, names: Sequence[str] = SITE_NAMES) -> list[Site]:
    """Every site of a model with ``n_layers`` blocks (a name without a layer gives one site)."""
    out = [Site(n, None) for n in names if n in GLOBAL_SITE_NAMES]
    return out + [Site(n, layer) for layer in range(n_layers) for n in names if n not in GLOBAL_SITE_NAMES]


def site_depth(site: Site, n_layers: int) -> int:
    """The block after which ``site`` has been seen: a capture may stop the forward there.

    Example:
        >>> site_depth(Site("embed", None), 12), site_depth(Site("ln_final", None), 12)
        (0, 11)
    """
    if site.layer is not None:
        return site.layer
    return n_layers - 1 if site.name == "ln_final" else 0
