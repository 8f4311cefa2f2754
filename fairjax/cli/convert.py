"""The `python -m fairjax.convert` program (flags below; the conversion: `fairjax/convert/`).

--source  HF dir / cached HF id / fairjax model or run dir / FMs-at-work .pkl; --base config +
tokenizer for a bare .pkl; --to fairjax | hf | upstream_bc | peft; --dtype; --overwrite;
--chat_template. Prints what was written and which trunk it holds.
"""
from __future__ import annotations

from absl import app, flags

from fairjax import cli
from fairjax import convert as library
from fairjax.convert import TARGETS, convert, describe_export

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
    flags.DEFINE_bool("chat_template", None, "wrap prompts in the tokenizer's chat template "
                      "(default: when the tokenizer has one; --nochat_template: never)")


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS.source or not FLAGS.output:
        raise app.UsageError("--source and --output are required")
    out = convert(FLAGS.source, FLAGS.output, base=FLAGS.base, to=FLAGS.to, dtype=FLAGS.dtype,
                  overwrite=FLAGS.overwrite, chat_template=FLAGS.chat_template)
    print(f"wrote {FLAGS.to} checkpoint to {out}")
    print(f"exported: {describe_export(FLAGS.source, FLAGS.to)}")


start = cli.program(define_flags, main, doc=library.__doc__)  # --help: fairjax/convert/'s text


if __name__ == "__main__":
    start()
