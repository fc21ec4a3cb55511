"""PyTorch imported when first used, not when a module is.

Importing torch takes 1.5 s on a quiet machine and 5-10 s on a busy one, and every stage
module needs it only inside its functions. Reading the configs (``skipat-deploy --help``, the
CLI's parameters, the API's defaults) must not pay for it.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


class LazyModule:
    """Stands for a module; the first attribute read imports it (``torch.no_grad`` etc.)."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._module: ModuleType | None = None

    def __getattr__(self, attr: str) -> Any:
        if self._module is None:
            self._module = importlib.import_module(self._name)
        return getattr(self._module, attr)

    def __repr__(self) -> str:
        return f"<lazy module {self._name!r}{'' if self._module is None else ' (imported)'}>"


torch = LazyModule("torch")
functional = LazyModule("torch.nn.functional")
