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


QUANT_SUFFIX = {"lora": "none", "qlora": "nf4", "qlora8": "int8"}


def algorithm_cfg(algo: str, remat: str):
    """configs/<algo>.py; "<algo>_lora" = LoRA (rank 16, bfloat16 frozen base; ILQL: shared base),
    "<algo>_qlora" / "<algo>_qlora8" = the same on an nf4 / int8 base."""
    name, _, lora = algo.partition("_")
    cfg = repo_config(name)
    cfg.model.remat = remat
    if lora:
        if lora not in QUANT_SUFFIX:
            raise ValueError(f"--algo={algo!r}: suffix must be one of {sorted(QUANT_SUFFIX)}")
        cfg.lora.enabled, cfg.lora.rank, cfg.lora.alpha = True, 16, 32.0
        cfg.lora.base_dtype = "bfloat16"
        cfg.lora.quant = QUANT_SUFFIX[lora]  # read by LoraConfig.from_config (agents/registry)
    return cfg
