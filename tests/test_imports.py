"""One direction of imports: no fairjax module imports a module of a higher layer.

The AST of every module under fairjax/ is walked (module-level AND in-function imports,
`import a.b`, `from a import b`, `from . import b`); each import of a fairjax module is checked
against LAYERS (docs/architecture.md "Layout and import order"). Same-layer imports are allowed.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from ast_helpers import entry_point_imports, nested_imports

PKG = Path(__file__).resolve().parents[1] / "fairjax"

# Lowest first. A module belongs to the longest prefix listed; every module must have one.
# "pkg.*" matches the modules inside pkg but not pkg itself (fairjax.cli, the package, holds the
# helpers every program shares; fairjax.cli.<name> are the programs).
LAYERS: list[tuple[str, ...]] = [
    ("fairjax", "fairjax.errors", "fairjax.faults", "fairjax.stages",  # leaves
     "fairjax.config_files", "fairjax.typed_config"),
    ("fairjax.models",),                                                # Flax modules + registry
    ("fairjax.io",),                                                    # formats, Orbax, load()
    ("fairjax.data", "fairjax.losses", "fairjax.rewards", "fairjax.rewriters",
     "fairjax.optim", "fairjax.parallel", "fairjax.eval", "fairjax.cli"),  # eval: numpy only
    ("fairjax.agents",),                                                # objectives + registry
    ("fairjax.train.loop", "fairjax.generate",
     "fairjax.agents.online", "fairjax.agents.online_objectives"),     # online RL samples: uses generate
    ("fairjax.runs",),                                                  # restore run dirs
    ("fairjax.train", "fairjax.train.build"),                           # config -> objects
    ("fairjax.pipeline", "fairjax.evaluate", "fairjax.score", "fairjax.systems", "fairjax.rest",
     "fairjax.convert", "fairjax.rewrite", "fairjax.audit"),            # stages and workflows
    ("fairjax.cli.*", "fairjax.benchmarks", "fairjax.serve",           # programs (flags), benchmarks,
     "fairjax.bench", "fairjax.rate", "*.__main__"),                   # server; entry-point shims
]


def layer_of(module: str) -> int:
    if module.endswith(".__main__"):  # `python -m fairjax.X`: X/__main__.py hands over to fairjax.cli.X
        return len(LAYERS) - 1
    best, best_len = None, -1
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            inside = p.endswith(".*") and module.startswith(p[:-1])
            if (inside or module == p or module.startswith(p + ".")) and len(p) > best_len:
                best, best_len = i, len(p)
    if best is None:
        raise KeyError(f"{module} has no layer in tests/test_imports.py LAYERS; add it")
    return best


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_module(name: str) -> bool:
    """`name` is a fairjax module or package in this checkout."""
    path = PKG.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imported_modules(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, fairjax module) of every import in `source` (any nesting depth)."""
    out = []
    package = module if is_package else module.rpartition(".")[0]
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import name` imports the submodule pkg.name when there is one, else a
            # name defined in pkg (`from fairjax.cli import is_user_error`: the package)
            for a in node.names:
                sub = f"{base}.{a.name}" if base else a.name
                out.append((node.lineno, sub if is_module(sub) or not base else base))
    return [(line, m) for line, m in out if m == "fairjax" or m.startswith("fairjax.")]


def upward_imports(source: str, module: str, is_package: bool = False) -> list[str]:
    """'module:line imports target (layer i > j)' for each import of a higher layer."""
    mine = layer_of(module)
    bad = []
    for line, target in imported_modules(source, module, is_package):
        if layer_of(target) > mine:
            bad.append(f"{module}:{line} imports {target} (layer {layer_of(target)} > {mine})")
    return bad


def all_modules():
    for path in sorted(PKG.rglob("*.py")):
        yield path, module_name(path, PKG)


def test_every_module_has_a_layer():
    for _, name in all_modules():
        layer_of(name)


def test_no_module_imports_a_higher_layer():
    bad = []
    for path, name in all_modules():
        bad += upward_imports(path.read_text(), name, path.name == "__init__.py")
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_library_modules_have_no_main_block():
    """`python -m fairjax.X` for a library package X runs `X/__main__.py`, which hands over to the
    program `fairjax.cli.X`; a library module has no `__main__` block of its own (one would import
    fairjax.cli.X, which imports the library back: an import circle)."""
    bad = {}
    for path, name in all_modules():
        if layer_of(name) == layer_of("fairjax.cli.x"):
            continue
        if mods := entry_point_imports(ast.parse(path.read_text())):
            bad[name] = mods
    assert not bad, bad


def test_main_modules_only_hand_over_to_the_cli_package():
    mains = [(p, n) for p, n in all_modules() if n.endswith(".__main__")]
    assert {"fairjax.train.__main__", "fairjax.evaluate.__main__"} <= {n for _, n in mains}
    for path, name in mains:
        mods = [m for _, m in imported_modules(path.read_text(), name, False)]
        program = "fairjax.cli." + name.split(".")[1]
        assert mods == [program], (name, mods)


def test_eval_imports_no_jax():
    for path, name in all_modules():
        if name == "fairjax.eval" or name.startswith("fairjax.eval."):
            tree = ast.parse(path.read_text())
            names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
            names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
            assert not [m for m in names if m.split(".")[0] in ("jax", "flax", "optax")], name


# Imports of fairjax modules that stay inside a function, with the reason: (file, module) -> why.
# jax stays optional for `import fairjax.rewards` (the numpy-only fairjax.eval imports
# fairjax.rewards.lexicon, and so the package): the Flax encoders load their port on first use.
LAZY_IMPORTS: dict[tuple[str, str], str] = {
    ("rewards/embedders.py", "fairjax.models"): "jax-free `import fairjax.rewards` (fairjax.eval uses it)",
}


def test_fairjax_imports_are_at_module_level():
    """Imports inside functions only where a dependency is optional: every import of a fairjax
    module sits at module level (an `if` / `try` there is fine), except LAZY_IMPORTS."""
    bad, used = [], set()
    for path, _ in all_modules():
        rel = path.relative_to(PKG).as_posix()
        for line, mod in nested_imports(path.read_text()):
            if (rel, mod) in LAZY_IMPORTS:
                used.add((rel, mod))
            else:
                bad.append(f"fairjax/{rel}:{line}: {mod}")
    assert not bad, "fairjax imports inside a function or class (move them to the top):\n" + "\n".join(bad)
    assert used == set(LAZY_IMPORTS), f"stale LAZY_IMPORTS entries: {set(LAZY_IMPORTS) - used}"


# ----------------------------------------------------------------------------- the checker
SNIPPET_UP = '''
import numpy as np
from fairjax.errors import ConfigError


def f():
    from fairjax.train import loop  # upward, hidden in a function
    return loop
'''


def test_checker_flags_upward_import_inside_a_function():
    bad = upward_imports(SNIPPET_UP, "fairjax.models.gpt2")
    assert len(bad) == 1 and "fairjax.models.gpt2:7 imports fairjax.train.loop" in bad[0]


@pytest.mark.parametrize("source", [
    "import fairjax.runs\n",
    "from fairjax import pipeline\n",
    "from ..agents import registry\n",   # relative import from fairjax/io/x.py
])
def test_checker_flags_each_import_form(source):
    assert upward_imports(source, "fairjax.io.hf")


def test_checker_allows_downward_and_same_layer_imports():
    src = ("from fairjax.models import common\nfrom fairjax.errors import ConfigError\n"
           "from . import torch_pickle\nimport jax\n")
    assert upward_imports(src, "fairjax.io.hf") == []
    with pytest.raises(KeyError, match="LAYERS"):
        layer_of("fairjax_other.x")


def test_checker_layers_the_cli_package_and_its_programs_apart():
    assert layer_of("fairjax.cli") < layer_of("fairjax.agents") < layer_of("fairjax.cli.train")
    src = ("from fairjax.train.build import train\n"
           "if __name__ == '__main__':\n    from fairjax.cli.x import start\n    start()\n")
    assert upward_imports(src, "fairjax.pipeline")  # a __main__ block is walked like the rest
    assert upward_imports(src, "fairjax.pipeline.__main__") == []  # X/__main__.py: the top layer


SNIPPET_NESTED = '''
import numpy as np
from fairjax.errors import ConfigError

try:
    from fairjax.io import gguf
except ImportError:
    gguf = None


def f():
    import json
    from fairjax.train import loop
    return loop


class C:
    def m(self):
        if True:
            import fairjax.runs as runs
            from . import sibling
        return runs, sibling
'''


def test_nested_import_checker_finds_function_and_method_imports():
    assert nested_imports(SNIPPET_NESTED) == [(13, "fairjax.train"), (20, "fairjax.runs"), (21, ".")]
    assert nested_imports("from fairjax.errors import ConfigError\nimport fairjax.runs\n") == []
