"""Restoring a run directory: its config, model, objective and trained params.

Used by evaluation, conversion, the pipeline and `train.build` (a BC run dir initialises the
ILQL policy, `init.policy`; `model.init` may name a run dir). The run's objective is rebuilt
from its saved config through the objective registry (`fairjax.agents.registry`) and only the
`params` / `frozen` checkpoint items are restored (`fairjax.io.run_dir.restore_trees`), onto this
host's first device, whatever topology saved them.

`load(path_or_id, ...)` is `fairjax.io.loader.load` that also accepts trainer run dirs.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple, Optional

import jax
import numpy as np

from fairjax.agents.base import Algorithm
from fairjax.agents.registry import build_algorithm
from fairjax.io import loader
from fairjax.io import run_dir as rd
from fairjax.io.checkpoint import load_model_dir
from fairjax.models import build_model

PyTree = Any


class RestoredRun(NamedTuple):
    """A run dir's checkpoint: its config, model and objective with trained `params`/`frozen`."""

    config: Any
    model_config: Any
    module: Any
    algorithm: Algorithm
    params: PyTree
    frozen: PyTree
    tokenizer: Any
    step: int


def restore_run(run_dir: str | os.PathLike, step: Any = None) -> RestoredRun:
    """Checkpoint `step` of a run dir (None/"best" = lowest eval loss, else latest; "latest"; or
    an int): rebuilds the objective from config.json + model/ abstractly and restores only the
    params and frozen items onto this host's first device (any saving topology)."""
    run_dir = Path(run_dir).absolute()
    cfg = rd.load_config(run_dir)
    mcfg, base, tok = load_model_dir(run_dir / rd.MODEL_DIR)
    module = build_model(mcfg)
    algorithm = build_algorithm(cfg, module, mcfg, base)
    one = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    params, frozen = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=one),
        jax.eval_shape(algorithm.init, jax.random.PRNGKey(0)))
    trees, s = rd.restore_trees(run_dir, step, {"params": params, "frozen": frozen})
    return RestoredRun(cfg, mcfg, module, algorithm, trees["params"], trees["frozen"], tok, s)


def restore_policy(run_dir: str | os.PathLike, step: Any = None) -> tuple[Any, PyTree]:
    """(model_config, policy LM params as numpy) of a run dir's checkpoint (see `restore_run`)."""
    run = restore_run(run_dir, step)
    _, lm_params = run.algorithm.policy(run.params, run.frozen)
    return run.model_config, jax.tree.map(np.asarray, jax.device_get(lm_params))


def load_policy_params(run_dir: str | os.PathLike, step: Any = None) -> Optional[PyTree]:
    """Policy params (best when step=None), or None when the run has no checkpoint yet (the hook
    `fairjax.io.checkpoint.load_run_dir` calls for trainer run dirs)."""
    if not rd.has_checkpoint(run_dir):
        return None
    return restore_policy(run_dir, step)[1]


def load_config_params_tokenizer(path_or_id, **kwargs):
    """`fairjax.io.loader.load_config_params_tokenizer`, trainer run dirs included."""
    return loader.load_config_params_tokenizer(path_or_id, restore_policy=load_policy_params,
                                               **kwargs)


def load(path_or_id, **kwargs):
    """(model, float32 params, Tokenizer) from any source `fairjax.io.loader.load` reads, and from
    fairjax trainer run dirs (the policy of the best, else latest, checkpoint)."""
    return loader.load(path_or_id, restore_policy=load_policy_params, **kwargs)
