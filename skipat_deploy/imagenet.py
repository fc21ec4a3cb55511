"""ImageNet-1k class names, in the standard class order (row *i* names class *i*)."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources


@lru_cache(maxsize=1)
def imagenet_classes() -> tuple[str, ...]:
    text = resources.files("skipat_deploy").joinpath("data/imagenet_classes.txt").read_text()
    return tuple(text.splitlines())
