"""Benchmarks: `python -m fairjax.bench TARGET [--flags]`.

Targets (one module each in `fairjax/benchmarks/`): forward, train, generate, reward, memory, rl.
Each prints a human-readable table and, with --json=PATH, writes its figures as JSON.
Speed is measured here, never asserted in tests.
"""
from __future__ import annotations

import importlib
import sys

from absl import app, flags

from fairjax import cli
from fairjax.losses.vocab import CHUNK_ENV

TARGETS = ("forward", "train", "generate", "reward", "memory", "rl")


def define_flags() -> None:
    """Define this CLI's absl flags (only when run as a program, so that importing several
    fairjax CLIs in one process never collides on shared flag names)."""
    if "model" in flags.FLAGS:
        return
    flags.DEFINE_string("model", "gpt2", "Model family: gpt2 | llama.")
    flags.DEFINE_string("size", "small", "Model size preset (tiny, small=124M, medium=355M, 1b, 7b, ...; "
                        "llama: smollm2-135m = SmolLM2-135M's shapes).")
    flags.DEFINE_string("algo", "ilql", "Objective for train/generate/memory: bc | ilql | alol | dpo; for rl: grpo | rloo | ppo.")
    flags.DEFINE_integer("batch", None, "Batch size (default: the target's own).")
    flags.DEFINE_integer("seq", None, "Sequence length / new tokens (default: the target's own).")
    flags.DEFINE_integer("steps", None, "Timed iterations (default: the target's own).")
    flags.DEFINE_string("dtype", None, "Compute dtype (default: float32 on CPU, bfloat16 on GPU/TPU).")
    flags.DEFINE_enum("attention", "xla", ["xla", "cudnn", "auto"],
                      "Attention kernel: xla (exact einsum) | cudnn (fused flash, GPU) | auto.")
    flags.DEFINE_bool("lora", False, "train/generate: LoRA (rank 16) instead of full "
                      "fine-tuning; the torch side uses peft.")
    flags.DEFINE_bool("torch", True, "Also time the PyTorch baseline when torch is importable.")
    flags.DEFINE_string("profile", None, "train: also trace 3 steps into this directory and print "
                        "the device time per kernel and category.")
    flags.DEFINE_bool("breakdown", False, "memory: also split each compiled step's FLOPs, bytes "
                      "accessed and peak temporaries by op category (benchmarks/breakdown.py).")
    flags.DEFINE_string("upstream_src", None, "generate --algo=ilql: also time upstream ILQL's own "
                        "IQL_Policy.sample_raw from this local checkout of "
                        "Sea-Snell/Implicit-Language-Q-Learning (benchmarks/upstream_ilql.py).")
    flags.DEFINE_string("json", None, "Write the figures to this JSON file.")
    flags.DEFINE_string("embedders", None, "reward: comma-separated embedder names (NAME@N: embed "
                        "N texts per side and extrapolate); default tfidf, MiniLM, MPNet.")
    flags.DEFINE_string("texts", None, "reward: postings JSONL (default the hn_jobs eval split).")
    flags.DEFINE_string("pools", None, "reward: comma-separated candidate pools (default bios + tech_bios).")
    flags.DEFINE_integer("vocab_chunk", None, "Vocabulary block of the chunked heads/CE "
                         "(0 = materialise [B, A, V] / [B, T, V]; default $FAIRJAX_VOCAB_CHUNK "
                         "or 8192).")


def main(argv: list[str]) -> None:
    if len(argv) != 2 or argv[1] not in TARGETS:
        raise app.UsageError(f"usage: python -m fairjax.bench {{{'|'.join(TARGETS)}}} [--flags]")
    if flags.FLAGS.vocab_chunk is not None:  # read by fairjax.losses.vocab.resolve_chunk
        import os

        os.environ[CHUNK_ENV] = str(flags.FLAGS.vocab_chunk)
    module = importlib.import_module(f"fairjax.benchmarks.{argv[1]}")
    module.run(flags.FLAGS)


def start(argv=None) -> None:
    define_flags()
    cli.set_usage(__doc__)
    app.run(main, argv=sys.argv if argv is None else argv)


if __name__ == "__main__":
    start()
