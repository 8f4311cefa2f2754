"""Train an objective: `python -m fairjax.train --config=configs/ilql.py [--config.a.b=v ...]`.

The config file is any `configs/*.py` or a run dir's `config.py` (relaunch / continue a run).
Unknown keys and wrong types fail while flags are parsed; `fairjax.train.build.validate_config` checks
ranges, choices and the data paths before any file is written. User mistakes (bad key, bad data,
missing or empty file) print one `error:` line naming the flag or file:line and the fix
(`fairjax.cli`; FAIRJAX_TRACEBACK=1 shows the traceback). Multi-process runs: see launch/*.sh.
"""
from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

from fairjax import cli, parallel, pipeline
from fairjax.train.build import validate_config


def define_flags() -> None:
    """Define this CLI's absl flags (only when run as a program, so that importing several
    fairjax CLIs in one process never collides on shared flag names)."""
    if "config" in flags.FLAGS:
        return
    config_flags.DEFINE_config_file("config", None, "Training config file (configs/*.py).",
                                    lock_config=True)
    flags.DEFINE_string("run_dir", None, "Run directory (default: config.run_dir).")
    flags.DEFINE_bool("resume", None, "Continue from the latest checkpoint (default: config.train.resume).")
    flags.DEFINE_bool("verbose", False, "Keep INFO logs of JAX/Orbax.")
    flags.mark_flags_as_required(["config"])


FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    cfg = FLAGS.config
    if FLAGS.resume is not None:
        cfg.train.resume = FLAGS.resume
    # Validate and initialise the distributed runtime before anything touches devices.
    loop = validate_config(cfg)  # before the run dir exists: a bad config leaves nothing behind
    parallel.initialize_distributed(loop.distributed)  # the typed `distributed` block
    out = pipeline.run(cfg, FLAGS.run_dir)
    result = out["train"]
    if parallel.is_main_process():
        skipped = sum(s["skipped"] for s in result.data_stats)
        print(f"done: {result.run_dir} step {result.step} best {result.best_step} "
              f"eval {result.eval_metrics.get('loss')}"
              + (f" ({skipped} bad data records skipped, see summary.json)" if skipped else ""),
              flush=True)
        if out["eval"]:
            print(f"fairness report: {out['eval']['report']['markdown']}", flush=True)


# user mistakes: one `error:` line (exit 2); quiet logs unless --verbose
start = cli.program(define_flags, main, doc=__doc__)


if __name__ == "__main__":
    start()
