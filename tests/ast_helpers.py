"""AST helpers of the architecture checks (tests/test_imports.py, tests/test_architecture.py)."""
from __future__ import annotations

import ast


def is_main_guard(node: ast.AST) -> bool:
    """`if __name__ == "__main__":` (either operand order)."""
    if not (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
            and len(node.test.ops) == 1 and isinstance(node.test.ops[0], ast.Eq)):
        return False
    sides = [node.test.left, *node.test.comparators]
    return (any(isinstance(s, ast.Name) and s.id == "__name__" for s in sides)
            and any(isinstance(s, ast.Constant) and s.value == "__main__" for s in sides))


def entry_point_imports(tree: ast.Module) -> list[str]:
    """Modules the `__main__` block imports (`from a import b` -> a)."""
    out = []
    for top in tree.body:
        if is_main_guard(top):
            for n in ast.walk(top):
                if isinstance(n, ast.Import):
                    out += [a.name for a in n.names]
                elif isinstance(n, ast.ImportFrom):
                    out.append(n.module or "")
    return out


FLAG_MODULES = ("absl.flags", "ml_collections.config_flags")


def flag_definitions(source: str) -> list[str]:
    """'line N: ...' for each absl flag definition or import of a flag module in `source`
    (`flags.DEFINE_*`, `config_flags.DEFINE_config_*`, `flags.mark_flag*_as_required`,
    `from absl import flags`, `from ml_collections import config_flags`)."""
    hits = []
    for node in ast.walk(ast.parse(source)):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Import):
            hits += [f"line {line}: import {a.name}" for a in node.names if a.name in FLAG_MODULES]
        elif isinstance(node, ast.ImportFrom):
            hits += [f"line {line}: from {node.module} import {a.name}" for a in node.names
                     if f"{node.module}.{a.name}" in FLAG_MODULES or node.module in FLAG_MODULES]
        elif isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            if name.startswith("DEFINE_") or name.startswith("mark_flag"):
                hits.append(f"line {line}: {name}(...)")
    return hits


SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)


def nested_imports(source: str, package: str = "fairjax") -> list[tuple[int, str]]:
    """(line, module) of each import of `package` (or relative import) nested in a function or
    class body; module-level `if` / `try` / `with` blocks count as module level. `from a import b`
    gives a; a relative import gives its dots and module as written (`.x`, `..`)."""
    out: list[tuple[int, str]] = []

    def visit(node: ast.AST, nested: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if nested and isinstance(child, ast.Import):
                out.extend((child.lineno, a.name) for a in child.names
                           if a.name == package or a.name.startswith(package + "."))
            elif nested and isinstance(child, ast.ImportFrom):
                mod = child.module or ""
                if child.level or mod == package or mod.startswith(package + "."):
                    out.append((child.lineno, "." * child.level + mod))
            visit(child, nested or isinstance(child, SCOPES))

    visit(ast.parse(source), False)
    return out
