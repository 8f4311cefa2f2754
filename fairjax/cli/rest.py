"""The `python -m fairjax.rest --config=configs/rest.py` program (the rounds: `fairjax/rest/`)."""
from __future__ import annotations

from absl import app, flags

from fairjax import cli
from fairjax import rest as library
from fairjax.rest import run

FLAGS = flags.FLAGS


def define_flags() -> None:
    from ml_collections import config_flags

    if "config" in flags.FLAGS:
        return
    config_flags.DEFINE_config_file("config", None, "ReST config (configs/rest.py).", lock_config=True)
    flags.mark_flags_as_required(["config"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    s = run(FLAGS.config)
    for r in s["rounds"]:
        rw = r["data"]["reward"]
        print(f"round {r['round']}: sampler {r['sampler']}, {r['data']['rows']} rows, reward "
              f"original {rw['original'].get('mean', float('nan')):.3f} / rewrite "
              f"{rw['rewrite'].get('mean', float('nan')):.3f}, faithful share "
              f"{r['data']['rewrite_faithful_share']}, {r['data']['pairs']} DPO pairs, trained "
              f"{r['steps']} steps -> {r['train_run']}")


start = cli.program(define_flags, main, doc=library.__doc__)  # --help: fairjax/rest/'s text


if __name__ == "__main__":
    start()
