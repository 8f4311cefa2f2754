"""The `python -m fairjax.rewrite --input=FILE --output=OUT.jsonl [--model=...]` program (formats,
resume and the rewriters: `fairjax/rewrite/`)."""
from __future__ import annotations

from absl import app, flags

from fairjax import cli
from fairjax import rewrite as library
from fairjax.rewrite import SHIPPED, format_table, run

FLAGS = flags.FLAGS


def define_flags() -> None:
    if "input" in flags.FLAGS:
        return
    flags.DEFINE_string("input", None, "Postings: .jsonl (a `text` per line), a text file (postings "
                        "separated by a line `---`), or - (stdin).")
    flags.DEFINE_string("output", None, "Output JSONL (appended; a rerun continues).")
    flags.DEFINE_integer("batch_size", 8, "Postings per rewrite batch (and per appended block).")
    flags.DEFINE_integer("seed", 0, "Sampling seed of a model rewriter.")
    flags.DEFINE_string("model", SHIPPED, "Baseline name, prompted[:SOURCE], preset, run dir or "
                        "model dir (default: the shipped rewriter).")
    flags.DEFINE_multi_string("pool", None, "Candidate pool JSONL for the diversity reward "
                              "(repeatable).")
    flags.DEFINE_float("temperature", 0.7, "Sampling temperature of a model rewriter.")
    flags.mark_flags_as_required(["input", "output"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    recs = run(FLAGS.input, FLAGS.output, FLAGS.model, FLAGS.pool, batch_size=FLAGS.batch_size,
               temperature=FLAGS.temperature, seed=FLAGS.seed)
    print(format_table(recs) if recs else f"{FLAGS.output}: every posting was already rewritten")
    print(f"{len(recs)} rewrites appended to {FLAGS.output} (model {FLAGS.model})")


start = cli.program(define_flags, main, doc=library.__doc__)  # --help: fairjax/rewrite/'s text


if __name__ == "__main__":
    start()
