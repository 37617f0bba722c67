"""Keep the flat API callable: `xai_bt.explain(...)`, `xai_bt.train(...)`, `xai_bt.evaluate(...)`.

Importing the submodule `xai_bt.explain` makes Python bind the package attribute `explain` to the
module, hiding the function of the same name; calling the module then calls the function."""
from __future__ import annotations

import sys
import types


def make_callable(module_name: str, function_name: str) -> None:
    """Let the module `module_name` be called as its function `function_name`."""
    module = sys.modules[module_name]

    class _CallableModule(types.ModuleType):
        def __call__(self, *args, **kwargs):
            return getattr(self, function_name)(*args, **kwargs)

    module.__class__ = _CallableModule
