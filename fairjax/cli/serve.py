"""`python -m fairjax.serve [--port=8000] [--host=127.0.0.1] [--model=...] [--pool=...]`: the
program around `fairjax/serve/` (the local page + JSON API).

Loads the rewriter and the scorers once, prints the URL and serves the page and the API with
uvicorn until interrupted. Bound to 127.0.0.1 (this computer only) unless --host is given.
"""
from __future__ import annotations

import logging

from absl import flags

from fairjax import cli
from fairjax.rewards.pool import CandidatePool, load_pool
from fairjax.serve.app import create_app
from fairjax.serve.service import Services

FLAGS = flags.FLAGS
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def define_flags() -> None:
    if "port" in FLAGS:
        return
    flags.DEFINE_integer("port", 8000, "TCP port.")
    flags.DEFINE_string("host", "127.0.0.1", "Interface to bind; anything but 127.0.0.1 makes the "
                        "page reachable from other machines (no authentication).")
    flags.DEFINE_string("model", None, "Rewriter to load (fairjax.rewrite.load_rewriter(model=...)); "
                        "default: the shipped rewriter.")
    flags.DEFINE_multi_string("pool", None, "Candidate pool JSONL (repeatable, concatenated); "
                              "default: the synthetic demo candidates of fairjax.data.demo.")
    flags.DEFINE_string("embedder", "tfidf", "Embedder for candidate matching: tfidf (fast, "
                        "numpy) or another embedder of fairjax.rewards.embedders.")
    flags.DEFINE_integer("queue_size", 32, "Rewrite requests that may wait; more get 503.")
    flags.DEFINE_integer("batch_size", 8, "Rewrites per model call.")


def main(argv) -> None:
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments: {argv[1:]}")
    import uvicorn

    if FLAGS.host not in LOCAL_HOSTS:
        logging.warning("--host=%s: the page and API are reachable from other machines and have "
                        "no authentication", FLAGS.host)
    pool = CandidatePool.concat([load_pool(p) for p in FLAGS.pool]) if FLAGS.pool else None
    services = Services(pool=pool, embedder=FLAGS.embedder, model=FLAGS.model)
    app = create_app(services, queue_size=FLAGS.queue_size, batch_size=FLAGS.batch_size)
    host = f"[{FLAGS.host}]" if ":" in FLAGS.host else FLAGS.host
    info = services.pool_info()
    print(f"fairjax.serve: rewriter {services.rewriter.name}; pool {info['name']} "
          f"({info['size']} candidates)", flush=True)
    print(f"fairjax.serve: http://{host}:{FLAGS.port}/", flush=True)
    uvicorn.run(app, host=FLAGS.host, port=FLAGS.port, log_level="warning")


start = cli.program(define_flags, main, doc=__doc__)


if __name__ == "__main__":
    start()
