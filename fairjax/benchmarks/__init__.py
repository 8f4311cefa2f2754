"""Benchmarks (`python -m fairjax.bench ...`): developer tools run from a repository checkout."""


def repo_config(name: str):
    """`configs/<name>.py` of the repository checkout (benchmarks run from one), unlocked."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "configs" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"fairjax_bench_config_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg = module.get_config()
    cfg.unlock()
    return cfg
