"""Convert checkpoints: `python -m fairjax.convert --source=PATH --output=DIR [--base=HF_DIR]`.

--source  HF dir / cached HF id / fairjax model or run dir / FMs-at-work .pkl (BC model.pkl,
          model_converted.pkl, PerTokenIQL model.pkl -> its policy LM).
--base    config + tokenizer for a bare .pkl state dict (HF dir, HF id or fairjax model dir).
--to      fairjax      : fairjax model dir (Orbax params/ + fairjax_model.json + tokenizer/)
          hf           : Hugging Face dir (config.json + model.safetensors + tokenizer files)
          upstream_bc  : FMs-at-work BC_LM `model.pkl` (torch zip format, GPT-2 only), written to
                         OUTPUT if it ends in .pkl, else OUTPUT/model.pkl
          peft         : a LoRA run dir's (lora.enabled, bc/alol) adapters as a PEFT directory
                         (adapter_config.json + adapter_model.safetensors) with the frozen base
                         as a Hugging Face dir in OUTPUT/base (load: PeftModel.from_pretrained)
--dtype   compute dtype recorded in the fairjax config (params stay float32).
HF exports take bos/eos/pad ids from the tokenizer; the command says which trunk it exported.
Nothing existing is overwritten without --overwrite; outputs appear atomically (temp + rename).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from fairjax.errors import ConfigError
from fairjax.io import checkpoint
from fairjax.io.hf import write_hf_dir
from fairjax.io.torch_pickle import save_torch_pickle
from fairjax.io.upstream import params_to_upstream_bc
from fairjax.models import lora as L
from fairjax.runs import load_config_params_tokenizer, restore_run

TARGETS = ("fairjax", "hf", "upstream_bc", "peft")


def convert(source: str, output: str, *, base: Optional[str] = None, to: str = "fairjax",
            dtype: Optional[str] = None, overwrite: bool = False,
            chat_template: Optional[bool] = None) -> Path:
    """Convert `source` to `to` format at `output`; returns the written path."""
    if to not in TARGETS:
        raise ValueError(f"--to={to!r}; expected one of {TARGETS}")
    out = Path(output).expanduser().resolve()
    if to == "upstream_bc":
        out = out if out.suffix == ".pkl" else out / "model.pkl"
        if out.exists() and not overwrite:
            raise FileExistsError(f"{out} exists; refusing to overwrite it (pass --overwrite)")
    else:
        checkpoint.check_output_free(out, overwrite)  # fail before the (slow) load
    if to == "peft":
        return checkpoint.atomic_dir(out, lambda tmp: export_peft(source, tmp), overwrite=overwrite)
    config, params, tokenizer = load_config_params_tokenizer(
        source, base=base, dtype=dtype, chat_template=chat_template)
    if to == "fairjax":
        return checkpoint.save_model_dir(out, config, params, tokenizer, overwrite=overwrite,
                                         extra_meta={"converted_from": str(source)})
    if to == "hf":
        return checkpoint.atomic_dir(
            out, lambda tmp: write_hf_dir(tmp, config, params, tokenizer, overwrite=True),
            overwrite=overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_torch_pickle(out, params_to_upstream_bc(params, config))
    return out


def export_peft(run_dir: str, out: Path) -> Path:
    """A LoRA run's adapters (best checkpoint) as a PEFT dir at `out`, its frozen base as a HF dir
    at `out/base` (tokenizer included)."""
    path = Path(run_dir).expanduser()
    if not checkpoint.is_run_dir(path) or not (path / "config.json").is_file():
        raise ConfigError(f"--source={run_dir}: --to=peft needs a fairjax run directory of a LoRA "
                          "run (config.json + model/ + checkpoints/)")
    run = restore_run(path)
    lc = run.config.lora
    adapters_only = isinstance(run.params, dict) and all(
        isinstance(v, dict) and set(v) == {"a", "b"} for v in run.params.values())
    if not lc.enabled or "base" not in (run.frozen or {}) or not adapters_only:
        raise ConfigError(f"--source={run_dir}: the run has no LoRA adapters on a frozen base "
                          f"(algorithm={run.config.algorithm}, lora.enabled={lc.enabled}); "
                          "PEFT export supports --config.lora.enabled=True bc/alol runs. "
                          "Use --to=hf for the full model")
    kind = run.model_config.kind
    lora_cfg = L.LoraConfig(rank=int(lc.rank), alpha=float(lc.alpha), dropout=float(lc.dropout),
                            targets=str(lc.targets))
    base = jax_to_numpy(run.frozen["base"])
    base_dir = out / "base"
    write_hf_dir(base_dir, run.model_config, base, run.tokenizer)
    L.write_peft_dir(out, jax_to_numpy(run.params), lora_cfg, kind, base_model_name="base")
    return out


def jax_to_numpy(tree):
    import jax
    import numpy as np

    return jax.tree.map(lambda x: np.asarray(jax.device_get(x), np.float32), tree)


def describe_export(source: str, to: str) -> str:
    """Which trunk an export holds, in words (a run dir holds several; only its policy LM, or for
    --to=peft its adapters, is exported)."""
    import json

    path = Path(source).expanduser()
    if not (path.is_dir() and (path / "model").is_dir() and (path / "checkpoints").is_dir()):
        return f"the language model of {source}"
    algo, lora = "?", False
    if (path / "config.json").is_file():
        try:
            run_cfg = json.loads((path / "config.json").read_text())
            algo, lora = run_cfg.get("algorithm", "?"), bool(run_cfg.get("lora", {}).get("enabled"))
        except (OSError, ValueError, AttributeError):
            pass
    has_ckpt = any(p.name.isdigit() for p in (path / "checkpoints").iterdir())
    when = ("its best checkpoint (lowest eval loss, else the latest)" if has_ckpt
            else "its initial model/ (no checkpoint yet)")
    if to == "peft":
        return f"the LoRA adapters of the {algo} run {source} ({when}) + their frozen base in base/"
    if algo == "ilql":
        what = ("the ILQL policy trunk (pi_beta's LM; the Q/V trunk and heads are not exported, "
                "so beta > 0 decoding needs the run dir)")
    else:
        what = f"the {algo} policy LM" + (" (LoRA adapters merged into the base)" if lora else "")
    return f"{what} of run {source}, {when}"
