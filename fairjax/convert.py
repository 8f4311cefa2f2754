"""Convert checkpoints: `python -m fairjax.convert --source=PATH --output=DIR [--base=HF_DIR]`.

--source  HF dir / cached HF id / fairjax model or run dir / FMs-at-work .pkl (BC model.pkl,
          model_converted.pkl, PerTokenIQL model.pkl -> its policy LM).
--base    config + tokenizer for a bare .pkl state dict (HF dir, HF id or fairjax model dir).
--to      fairjax      : fairjax model dir (Orbax params/ + fairjax_model.json + tokenizer/)
          hf           : Hugging Face dir (config.json + model.safetensors + tokenizer files)
          upstream_bc  : FMs-at-work BC_LM `model.pkl` (torch zip format, GPT-2 only), written to
                         OUTPUT if it ends in .pkl, else OUTPUT/model.pkl
--dtype   compute dtype recorded in the fairjax config (params stay float32).
Nothing existing is overwritten without --overwrite; outputs appear atomically (temp + rename).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

from absl import app, flags

TARGETS = ("fairjax", "hf", "upstream_bc")

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Define this CLI's absl flags (only when run as a program, so that importing several
    fairjax CLIs in one process never collides on shared flag names)."""
    if "source" in flags.FLAGS:
        return
    flags.DEFINE_string("source", None, "checkpoint to convert (path or cached HF id)")
    flags.DEFINE_string("base", None, "HF dir / id / fairjax model dir with config + tokenizer "
                        "(needed for .pkl sources)")
    flags.DEFINE_string("output", None, "output directory (or .pkl file for --to=upstream_bc)")
    flags.DEFINE_enum("to", "fairjax", TARGETS, "output format")
    flags.DEFINE_string("dtype", None, "compute dtype stored in the config (e.g. float32, bfloat16)")
    flags.DEFINE_bool("overwrite", False, "replace an existing non-empty output")
    flags.DEFINE_bool("chat_template", False, "mark the tokenizer to wrap prompts in its chat template")


def convert(source: str, output: str, *, base: Optional[str] = None, to: str = "fairjax",
            dtype: Optional[str] = None, overwrite: bool = False,
            chat_template: bool = False) -> Path:
    """Convert `source` to `to` format at `output`; returns the written path."""
    from fairjax.io import checkpoint
    from fairjax.runs import load_config_params_tokenizer

    if to not in TARGETS:
        raise ValueError(f"--to={to!r}; expected one of {TARGETS}")
    out = Path(output).expanduser().resolve()
    if to == "upstream_bc":
        out = out if out.suffix == ".pkl" else out / "model.pkl"
        if out.exists() and not overwrite:
            raise FileExistsError(f"{out} exists; refusing to overwrite it (pass --overwrite)")
    else:
        checkpoint.check_output_free(out, overwrite)  # fail before the (slow) load
    config, params, tokenizer = load_config_params_tokenizer(
        source, base=base, dtype=dtype, chat_template=chat_template)
    if to == "fairjax":
        return checkpoint.save_model_dir(out, config, params, tokenizer, overwrite=overwrite,
                                         extra_meta={"converted_from": str(source)})
    if to == "hf":
        from fairjax.io.hf import write_hf_dir

        return checkpoint.atomic_dir(
            out, lambda tmp: write_hf_dir(tmp, config, params, tokenizer, overwrite=True),
            overwrite=overwrite)
    from fairjax.io.torch_pickle import save_torch_pickle
    from fairjax.io.upstream import params_to_upstream_bc

    out.parent.mkdir(parents=True, exist_ok=True)
    save_torch_pickle(out, params_to_upstream_bc(params, config))
    return out


def _user_errors() -> tuple[type, ...]:
    from fairjax.io.tokenizer import VocabMismatchError
    from fairjax.errors import CheckpointMismatchError, ConfigError
    from fairjax.io.torch_pickle import UnsafePickleError

    return (CheckpointMismatchError, ConfigError, VocabMismatchError, UnsafePickleError,
            FileNotFoundError, FileExistsError, ValueError)


def main(argv) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS.source or not FLAGS.output:
        raise app.UsageError("--source and --output are required")
    try:
        out = convert(FLAGS.source, FLAGS.output, base=FLAGS.base, to=FLAGS.to, dtype=FLAGS.dtype,
                      overwrite=FLAGS.overwrite, chat_template=FLAGS.chat_template)
    except _user_errors() as e:
        print(f"fairjax.convert: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {FLAGS.to} checkpoint to {out}")
    return 0


if __name__ == "__main__":
    define_flags()
    app.run(main)
