"""Named activation sites and where they live in each architecture.

A site is a (name, layer) pair such as ``resid_post.5``. Every public function
that takes a site also accepts the TransformerLens hook name
(``blocks.5.hook_resid_post``) and a ``Site`` object.

Example:
    >>> parse_site("blocks.3.attn.hook_z", n_layers=12)
    Site(name='attn_z', layer=3)
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

#: TransformerLens hook-name suffixes for each site.
TL_SUFFIX: dict[str, str] = {
    "resid_pre": "hook_resid_pre",
    "resid_mid": "hook_resid_mid",
    "resid_post": "hook_resid_post",
    "attn_out": "hook_attn_out",
    "mlp_out": "hook_mlp_out",
    "mlp_act": "mlp.hook_post",
    "attn_z": "attn.hook_z",
}
_TL_TO_NAME = {v: k for k, v in TL_SUFFIX.items()}
_TL_RE = re.compile(r"^blocks\.(\d+)\.(.+)$")
_CANON_RE = re.compile(r"^([a-z_]+)[.:/](\d+)$")


@dataclass(frozen=True, order=True)
class Site:
    """One hook site: a canonical name and a layer index."""

    name: str
    layer: int

    def __str__(self) -> str:
        return f"{self.name}.{self.layer}"

    @property
    def tl_name(self) -> str:
        """The TransformerLens hook name for this site."""
        return f"blocks.{self.layer}.{TL_SUFFIX[self.name]}"


SiteLike = Union[str, Site, tuple]


def _valid_sites_message(n_layers: int | None) -> str:
    layers = f"layers 0..{n_layers - 1}" if n_layers else "any layer"
    return (
        f"valid site names: {', '.join(SITE_NAMES)} ({layers}), written as 'resid_post.5', "
        f"('resid_post', 5) or a TransformerLens name such as 'blocks.5.hook_resid_post' "
        f"(suffixes: {', '.join(TL_SUFFIX.values())})"
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
    if not isinstance(name, str) or name not in SITE_NAMES:
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
        if isinstance(s, str) and s in SITE_NAMES:
            out.extend(Site(s, layer) for layer in range(n_layers))
        else:
            out.append(parse_site(s, n_layers))
    if not out:
        raise InterpError(f"no sites given; {_valid_sites_message(n_layers)}")
    seen: dict[Site, None] = dict.fromkeys(out)
    return list(seen)


def all_sites(n_layers: int, names: Sequence[str] = SITE_NAMES) -> list[Site]:
    """Every site of a model with ``n_layers`` blocks."""
    return [Site(n, layer) for layer in range(n_layers) for n in names]
