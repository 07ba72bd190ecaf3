"""Pairs of tokens (or image patches) that do or do not belong to the same object.

Two sources:

- text: ``data/coref_texts.jsonl`` holds short texts whose entities are
  annotated as character spans (entity id → list of [start, end) spans), so
  the annotation does not depend on a tokenizer; ``entity_groups`` maps them
  to token indices through the tokenizer's offsets (``tokenize_texts`` does
  it for a model). ``word_groups`` groups the sub-word tokens of each
  whitespace-separated word.
- images: ``shapes_dataset`` draws separate coloured rectangles; a patch's
  object is the majority object under it (``patch_groups``), and
  ``vit_hidden_states`` reads the patch tokens of a ``transformers.ViTModel``
  (``interp.testing.tiny_vit`` builds a random-weight one).

``sample_pairs`` turns per-unit (text or image) group labels into balanced
positive/negative pairs. Each anchor token gets as many same-object as
different-object partners, so a probe cannot win by scoring tokens one at a
time; with ``subgroups`` (the mention of each entity token) it keeps cross-mention
pairs (binding) apart from within-mention pairs (sub-tokens of one mention:
adjacency). The experiment splits texts three ways with
``interp.protocol.split_groups``; ``split_units`` (train/test only) remains for
quick two-way checks.

Example:
    >>> import numpy as np
    >>> ps = sample_pairs([np.array([0, 0, 1, 1, -1])], seed=0)
    >>> sorted(set(ps.labels.tolist())), ps.pairs.shape[1]
    ([0, 1], 2)
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..errors import InterpError
from .jsonl import iter_jsonl

COREF_PATH = Path(__file__).resolve().parents[2] / "data" / "coref_texts.jsonl"


# ------------------------------------------------------------------ text data
def load_coref_texts(path: str | Path | None = None) -> list[dict]:
    """Annotated texts: ``{"id", "text", "entities": {entity: [[start, end], ...]}}``, validated.

    Example:
        texts = load_coref_texts()
        texts[0]["text"][slice(*texts[0]["entities"]["a"][0])]
    """
    path = Path(path) if path is not None else COREF_PATH
    if not path.exists():
        raise InterpError(f"no annotated texts at {path}; pass the path of a JSONL file with text and entities")
    out = []
    for n, rec in iter_jsonl(path, example='{"id": "t1", "text": "Ann met Bo.", "entities": {"a": [[0, 3]]}}'):
        text, ents = rec.get("text"), rec.get("entities")
        if not isinstance(text, str) or not isinstance(ents, dict) or not ents:
            raise InterpError(f"{path}:{n} needs a 'text' string and a non-empty 'entities' mapping")
        seen: list[tuple[int, int]] = []
        for ent, spans in ents.items():
            for s, e in spans:
                if not 0 <= s < e <= len(text):
                    raise InterpError(f"{path}:{n} entity {ent} span [{s}, {e}) is outside the text")
                if any(s < e2 and e > s2 for s2, e2 in seen):
                    raise InterpError(f"{path}:{n} entity {ent} span [{s}, {e}) overlaps another span")
                seen.append((s, e))
        out.append(rec)
    return out


def token_offsets(tokenizer, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids (as ``Model.encode(chat=False)`` makes them) and each token's character span."""
    enc = tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]


def _overlaps(offsets: Sequence[tuple[int, int]], s: int, e: int) -> list[int]:
    return [t for t, (a, b) in enumerate(offsets) if b > a and a < e and b > s]


def entity_groups(offsets: Sequence[tuple[int, int]], entities: dict) -> tuple[np.ndarray, np.ndarray]:
    """Per token: entity index (−1 if none) and mention index within the entity (−1 if none).

    Example:
        >>> groups, mention = entity_groups([(0, 3), (3, 4), (4, 8)], {"a": [[0, 3]], "b": [[4, 8]]})
        >>> groups.tolist(), mention.tolist()
        ([0, -1, 1], [0, -1, 0])
    """
    groups = np.full(len(offsets), -1, dtype=np.int64)
    mention = np.full(len(offsets), -1, dtype=np.int64)
    for g, (_, spans) in enumerate(sorted(entities.items())):
        for m, (s, e) in enumerate(sorted(spans)):
            for t in _overlaps(offsets, s, e):
                groups[t], mention[t] = g, m
    return groups, mention


def word_groups(text: str, offsets: Sequence[tuple[int, int]]) -> np.ndarray:
    """Per token: index of its whitespace-separated word if that word has ≥ 2 tokens, else −1.

    Example:
        >>> word_groups("ab cd", [(0, 1), (1, 2), (2, 5)]).tolist()
        [0, 0, -1]
    """
    groups = np.full(len(offsets), -1, dtype=np.int64)
    taken = set()
    for w, m in enumerate(re.finditer(r"\S+", text)):
        toks = [t for t in _overlaps(offsets, m.start(), m.end()) if t not in taken]
        if len(toks) >= 2:
            groups[toks] = w
        taken.update(toks)
    return groups


def tokenize_texts(model, records: Sequence[dict]) -> dict:
    """Token ids and per-token entity / mention / word groups of each annotated text.

    Returns ``{"texts", "ids", "entity", "mention", "word", "lengths"}`` (one entry per text). The ids
    come from the tokenizer's offsets and are checked against ``model.encode(chat=False)``, so they are
    the tokens a capture of the same texts sees.

    Example:
        tok = tokenize_texts(model, load_coref_texts()[:2])
        tok["entity"][0]   # entity index per token, -1 outside any entity
    """
    texts = [r["text"] for r in records]
    enc = model.encode(texts, chat=False)
    out: dict = {"texts": texts, "ids": [], "entity": [], "mention": [], "word": []}
    for i, r in enumerate(records):
        ids, offsets = token_offsets(model.tokenizer, r["text"])
        if ids != enc.ids[i]:
            raise InterpError(f"text {i}: tokenizing with offsets gave different tokens than model.encode; the "
                              f"tokenizer must be a fast tokenizer that adds the same special tokens")
        g, m = entity_groups(offsets, r["entities"])
        out["ids"].append(ids)
        out["entity"].append(g)
        out["mention"].append(m)
        out["word"].append(word_groups(r["text"], offsets))
    out["lengths"] = [len(x) for x in out["ids"]]
    return out


# ------------------------------------------------------------------ pairs
#: ``PairSet.kind`` values: which evaluation subset a pair belongs to.
WITHIN, CROSS, ANY = 0, 1, -1
KIND_NAMES = {WITHIN: "within", CROSS: "cross", ANY: "all"}


@dataclass
class PairSet:
    """Pairs of global token rows, their 0/1 labels, the unit (text/image) each came from and its subset.

    ``kind`` is ``CROSS`` (1) for a pair in the cross-mention subset (positives: tokens of two
    *different* mentions of one entity; negatives matched to them), ``WITHIN`` (0) for the
    within-mention subset (positives: two sub-tokens of one mention, i.e. adjacency), ``ANY`` (−1)
    when the pairs were sampled without mentions.
    """

    pairs: torch.Tensor  # [n, 2] long
    labels: torch.Tensor  # [n] long
    unit: torch.Tensor  # [n] long
    kind: torch.Tensor | None = None  # [n] long; None: all ANY

    def __post_init__(self) -> None:
        if self.kind is None:
            self.kind = torch.full_like(self.labels, ANY)

    def __len__(self) -> int:
        return self.pairs.shape[0]

    def where(self, keep: torch.Tensor) -> "PairSet":
        """The pairs where the bool mask ``keep`` [n] is true."""
        return PairSet(self.pairs[keep], self.labels[keep], self.unit[keep], self.kind[keep])

    def subset(self, units) -> "PairSet":
        """The pairs whose unit is in ``units``."""
        return self.where(torch.isin(self.unit, torch.as_tensor(list(units), dtype=torch.long)))

    def of_kind(self, kind: str | int) -> "PairSet":
        """The pairs of one subset: "cross", "within" or "all" (every pair)."""
        code = {v: k for k, v in KIND_NAMES.items()}.get(kind, kind)
        if code not in KIND_NAMES:
            raise InterpError(f"pair kind must be 'cross', 'within' or 'all', got {kind!r}")
        return self if code == ANY else self.where(self.kind == code)


def sample_pairs(groups: Sequence[np.ndarray], row_offsets: Sequence[int] | None = None, per_anchor: int = 2,
                 seed: int = 0, skip_positions: Sequence[int] = (),
                 subgroups: Sequence[np.ndarray] | None = None) -> PairSet:
    """Balanced same-group (1) / different-group (0) pairs within each unit.

    ``groups[u]`` gives each token of unit u a group id (−1: not part of any
    object; such tokens are never paired). Every anchor token gets up to
    ``per_anchor`` partners from its own group and as many from other groups
    of the same unit, so both classes share the same anchors. Pairs are
    unordered and unique. ``row_offsets[u]`` is the global row of unit u's
    first token (default: cumulative lengths); ``skip_positions`` are token
    positions never paired (e.g. 0, whose activations are attention-sink
    outliers in most LLMs).

    With ``subgroups`` (e.g. the mention index of each token within its entity)
    positives are of two kinds, sampled and balanced separately: each anchor gets
    up to ``per_anchor`` partners from *other* subgroups of its group (``CROSS``:
    binding across mentions) and up to ``per_anchor`` from its own subgroup
    (``WITHIN``: sub-tokens of one mention, which adjacency alone can tell), each
    matched by as many different-group partners of the same anchor; ``kind``
    records the subset, and each subset is balanced on its own.
    """
    if per_anchor < 1:
        raise InterpError(f"per_anchor must be >= 1, got {per_anchor}")
    if row_offsets is None:
        row_offsets = np.concatenate([[0], np.cumsum([len(g) for g in groups])[:-1]]).tolist()
    if len(row_offsets) != len(groups):
        raise InterpError(f"got {len(row_offsets)} row offsets for {len(groups)} units")
    if subgroups is not None:
        if len(subgroups) != len(groups) or any(len(s) != len(g) for s, g in zip(subgroups, groups)):
            raise InterpError("subgroups must give one subgroup id per token of every unit, like groups")
        return _sample_by_kind(groups, subgroups, row_offsets, per_anchor, seed, skip_positions)
    rng = np.random.default_rng(seed)
    pos, neg = set(), set()
    for u, g in enumerate(groups):
        g = np.asarray(g).copy()
        g[[p for p in skip_positions if p < len(g)]] = -1
        valid = np.nonzero(g >= 0)[0]
        for a in valid:
            same = valid[(g[valid] == g[a]) & (valid != a)]
            other = valid[g[valid] != g[a]]
            k = min(per_anchor, len(same), len(other))
            if k == 0:
                continue
            base = row_offsets[u]
            for b in rng.choice(same, k, replace=False):
                pos.add((base + min(a, b), base + max(a, b), u))
            for c in rng.choice(other, k, replace=False):
                neg.add((base + min(a, c), base + max(a, c), u))
    if not pos or not neg:
        raise InterpError("no pairs could be made: each unit needs at least two groups, one with two or more tokens")
    pos_l, neg_l = sorted(pos), sorted(neg)
    n = min(len(pos_l), len(neg_l))  # dedup can leave the classes unequal: trim the larger one
    pos_l = [pos_l[i] for i in sorted(rng.choice(len(pos_l), n, replace=False))]
    neg_l = [neg_l[i] for i in sorted(rng.choice(len(neg_l), n, replace=False))]
    rows = np.array(pos_l + neg_l, dtype=np.int64)
    labels = np.array([1] * n + [0] * n, dtype=np.int64)
    return PairSet(torch.from_numpy(rows[:, :2].copy()), torch.from_numpy(labels), torch.from_numpy(rows[:, 2].copy()))


def _sample_by_kind(groups, subgroups, row_offsets, per_anchor: int, seed: int, skip_positions) -> PairSet:
    """``sample_pairs`` with subgroups: cross- and within-subgroup positives, each with its own negatives."""
    rng = np.random.default_rng(seed)
    pos: dict[tuple, int] = {}
    neg: dict[tuple, int] = {}
    for u, (g, m) in enumerate(zip(groups, subgroups)):
        g, m = np.asarray(g).copy(), np.asarray(m)
        g[[p for p in skip_positions if p < len(g)]] = -1
        valid = np.nonzero(g >= 0)[0]
        base = row_offsets[u]
        for a in valid:
            same = valid[(g[valid] == g[a]) & (valid != a)]
            other = valid[g[valid] != g[a]]
            cross, within = same[m[same] != m[a]], same[m[same] == m[a]]
            k_c = min(per_anchor, len(cross), len(other))
            k_w = min(per_anchor, len(within), len(other) - k_c)
            if k_c + k_w == 0:
                continue
            negs = rng.choice(other, k_c + k_w, replace=False)
            for kind, partners, matched in ((CROSS, cross, negs[:k_c]), (WITHIN, within, negs[k_c:])):
                k = len(matched)
                if k == 0:
                    continue
                for b in rng.choice(partners, k, replace=False):
                    pos.setdefault((base + min(a, b), base + max(a, b), u), kind)
                for c in matched:
                    neg.setdefault((base + min(a, c), base + max(a, c), u), kind)
    rows, labels, kinds = [], [], []
    for kind in (CROSS, WITHIN):  # balance each subset on its own
        p = sorted(k for k, v in pos.items() if v == kind)
        q = sorted(k for k, v in neg.items() if v == kind)
        n = min(len(p), len(q))
        for lab, items in ((1, p), (0, q)):
            rows += [items[i] for i in sorted(rng.choice(len(items), n, replace=False))]
            labels += [lab] * n
            kinds += [kind] * n
    if not rows:
        raise InterpError("no pairs could be made: each unit needs at least two groups, one with two or more tokens")
    arr = np.array(rows, dtype=np.int64)
    return PairSet(torch.from_numpy(arr[:, :2].copy()), torch.tensor(labels, dtype=torch.long),
                   torch.from_numpy(arr[:, 2].copy()), torch.tensor(kinds, dtype=torch.long))


def split_units(n_units: int, test_fraction: float = 0.25, seed: int = 0) -> tuple[list[int], list[int]]:
    """Held-out units (texts or images): (train, test) index lists.

    Example:
        >>> train, test = split_units(8, 0.25)
        >>> len(train), len(test), sorted(train + test) == list(range(8))
        (6, 2, True)
    """
    if not 0 < test_fraction < 1:
        raise InterpError(f"test_fraction must be between 0 and 1, got {test_fraction}")
    n_test = int(round(n_units * test_fraction))
    if n_test < 1 or n_test >= n_units:
        raise InterpError(f"cannot hold out {test_fraction:.0%} of {n_units} units; need more units")
    perm = np.random.default_rng(seed).permutation(n_units)
    return sorted(perm[n_test:].tolist()), sorted(perm[:n_test].tolist())


# ------------------------------------------------------------------ images
def shapes_dataset(n_images: int, size: int = 32, n_objects: int = 3, min_side: int = 8,
                   seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images [n, 3, size, size] in [0, 1] of separate coloured rectangles, and masks [n, size, size].

    Mask values: 0 background, 1..n_objects the rectangles (which never
    overlap or touch). Colours are random, background a noisy grey.

    Example:
        >>> images, masks = shapes_dataset(2, size=32, n_objects=2)
        >>> tuple(images.shape), int(masks.max())
        ((2, 3, 32, 32), 2)
    """
    if min_side < 1 or n_objects < 1 or min_side * 2 > size:
        raise InterpError(f"cannot place {n_objects} rectangles of side >= {min_side} in a {size}x{size} image")
    rng = np.random.default_rng(seed)
    images = np.empty((n_images, 3, size, size), dtype=np.float32)
    masks = np.zeros((n_images, size, size), dtype=np.int64)
    for i in range(n_images):
        for _ in range(50):  # start the image over when the rectangles leave no room
            images[i] = 0.5 + 0.05 * rng.standard_normal((3, size, size))
            masks[i] = 0
            placed = 0
            for _ in range(100):
                if placed == n_objects:
                    break
                h, w = rng.integers(min_side, size // 2 + 1, size=2)
                y, x = rng.integers(0, size - h + 1), rng.integers(0, size - w + 1)
                if masks[i, max(0, y - 1):y + h + 1, max(0, x - 1):x + w + 1].any():
                    continue
                placed += 1
                masks[i, y:y + h, x:x + w] = placed
                images[i, :, y:y + h, x:x + w] = rng.uniform(0, 1, size=3)[:, None, None]
            if placed == n_objects:
                break
        else:
            raise InterpError(f"could not place {n_objects} separate rectangles of side >= {min_side} in a "
                              f"{size}x{size} image; use fewer objects or a smaller min_side")
    return torch.from_numpy(images).clamp(0, 1), torch.from_numpy(masks)


def patch_groups(masks: torch.Tensor, patch: int, background: int | None = 0) -> torch.Tensor:
    """Majority object per patch [n, n_patches] (row-major, as ViT orders patches); −1 where background wins.

    Example:
        >>> m = torch.zeros(1, 4, 4, dtype=torch.long); m[0, :2, :2] = 1
        >>> patch_groups(m, 2).tolist()
        [[1, -1, -1, -1]]
    """
    n, h, w = masks.shape
    if h % patch or w % patch:
        raise InterpError(f"mask size {h}x{w} is not a multiple of the patch size {patch}")
    blocks = masks.reshape(n, h // patch, patch, w // patch, patch).permute(0, 1, 3, 2, 4).reshape(n, -1, patch * patch)
    out = torch.mode(blocks, dim=-1).values
    if background is not None:
        out[out == background] = -1
    return out


def vit_hidden_states(vit, images: torch.Tensor, layers: Sequence[int] | None = None,
                      batch_size: int = 16) -> dict[int, torch.Tensor]:
    """Patch tokens after each block (``resid_post``): {layer: [n_images, n_patches, d]}, CLS dropped."""
    n_layers = vit.config.num_hidden_layers
    layers = list(range(n_layers)) if layers is None else list(layers)
    if any(not 0 <= layer < n_layers for layer in layers):
        raise InterpError(f"layers must be in 0..{n_layers - 1}, got {layers}")
    if images.dim() != 4 or images.shape[1] != vit.config.num_channels:
        raise InterpError(f"images must be [n, {vit.config.num_channels}, H, W], got {tuple(images.shape)}")
    n_patches = (vit.config.image_size // vit.config.patch_size) ** 2
    out: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    with torch.no_grad():
        for s in range(0, images.shape[0], batch_size):
            hs = vit(pixel_values=images[s:s + batch_size].float(), output_hidden_states=True).hidden_states
            for layer in layers:
                # hidden_states[0] is the embedding; [l + 1] leaves block l. The first n - n_patches are CLS/registers
                h = hs[layer + 1]
                out[layer].append(h[:, h.shape[1] - n_patches:].float())
    return {layer: torch.cat(v) for layer, v in out.items()}
