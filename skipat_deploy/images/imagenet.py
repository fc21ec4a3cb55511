"""ImageNet-1k classes in the standard class order (row *i* is class *i*): names, and the
WordNet IDs that folder layouts use (``n01440764`` is class 0; the order is the IDs sorted)."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources


@lru_cache(maxsize=1)
def imagenet_classes() -> tuple[str, ...]:
    text = resources.files("skipat_deploy").joinpath("data/imagenet_classes.txt").read_text()
    return tuple(text.splitlines())


@lru_cache(maxsize=1)
def imagenet_synsets() -> tuple[str, ...]:
    text = resources.files("skipat_deploy").joinpath("data/imagenet_synsets.txt").read_text()
    return tuple(text.split())


@lru_cache(maxsize=1)
def synset_index() -> dict[str, int]:
    """WordNet ID -> class index in the 1k order."""
    return {w: i for i, w in enumerate(imagenet_synsets())}
