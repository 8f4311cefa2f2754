"""The `python -m fairjax.evaluate --config=configs/eval.py` program (the evaluation:
`fairjax/evaluate/`)."""
from __future__ import annotations

from absl import app, flags

from fairjax import cli
from fairjax import evaluate as library
from fairjax.evaluate import evaluate, format_summary

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Define this CLI's absl flags (only when run as a program)."""
    from ml_collections import config_flags

    if "config" in flags.FLAGS:
        return
    config_flags.DEFINE_config_file("config", None, "Evaluation config (configs/eval.py).",
                                    lock_config=True)
    flags.mark_flags_as_required(["config"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)
    summary = evaluate(FLAGS.config)
    print(format_summary(summary))
    print(f"report: {summary['report']['markdown']}")


start = cli.program(define_flags, main, doc=library.__doc__)  # --help: fairjax/evaluate/'s text


if __name__ == "__main__":
    start()
