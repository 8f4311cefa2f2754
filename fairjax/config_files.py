"""Loading one config file from another: `configs/*.py` are read by path (ml_collections'
`--config=configs/ilql.py`), not as a package, so a config reaches its siblings (the shared
`common.py`, a stage's config) through `sibling(name, __file__)`. A leaf that imports nothing of
fairjax: configs/ use it (and `fairjax.stages`) without loading any of the runtime."""
from __future__ import annotations

import importlib.util
import os
from types import ModuleType


def sibling(name: str, here: str) -> ModuleType:
    """The module `<name>.py` in the directory of the file `here` (a config's `__file__`),
    executed afresh (as ml_collections loads a config file)."""
    path = os.path.join(os.path.dirname(os.path.abspath(here)), f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"fairjax_configs_{name}", path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"{path}: no config module {name!r} beside {here}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
