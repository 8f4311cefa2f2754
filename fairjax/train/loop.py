"""The generic compiled training loop: step, evaluation, metrics, checkpoints, watchdog, fault hook.

`run(loop, run_dir, setup) -> RunResult` trains what `setup` (a `Setup`, or a zero-argument
factory of one, called after the run dir and mesh exist) holds: an `Algorithm`, batch iterators
and partition rules, with the loop settings `loop` (a `LoopConfig`: the typed train / optim /
mesh / distributed blocks, the seed and the run's name, converted once from the run config by
`LoopConfig.from_config`). It knows no model, data format or reward, and never sees the whole
run config; `fairjax.train.build` turns a config into a LoopConfig and a Setup, writes the
resolved config into the run dir, and `fairjax.train.build.train` chains them (the CLI:
`python -m fairjax.train`).

One step = one call of the jit-compiled `train_step` (buffer donation of the state):
  1. the step's batch `[grad_accum, B, ...]` (B = global micro-batch, sharded over
     ('data','fsdp')) is scanned; each micro-batch's loss/grad is computed with
     `Algorithm.loss(params, frozen, batch, fold_in(step_key, i))`; grads and metrics are averaged;
  2. optax update (fairjax.optim: clip -> AdamW with schedule);
  3. `Algorithm.update_frozen(params, frozen, step + 1)` (ILQL Polyak / hard target updates);
  4. if the loss or the gradient norm is not finite, the old params/optimizer/frozen state are
     kept, and the host raises `NonFiniteLossError` naming the step, so no checkpoint ever holds
     a non-finite state and the last good checkpoint stays intact.
The host checks finiteness one step late (after dispatching the next step), so device work is
never stalled by the check.

Batches come from `Setup.train_data`, or, when the objective has a `Producer`
(`agents.base.Producer`: online RL), from `producer.produce(state, data batch)`: a batch made
with the current state (rollouts of the current policy, scored on the host), trained on by the
same compiled step. A producer's batch may hold `producer.updates` consecutive update batches
(`[updates, grad_accum, B, ...]`: epochs x minibatches of one rollout); the step then applies
them as that many optimizer updates in one compiled call (1-4 above, finiteness over all of
them). Because the next batch reads the new params, such a step is waited for and timed.

Randomness: the key of step s is `fold_in(rng, s)` with `rng` from the config seed and saved in
the checkpoint; the data order is a function of (seed, epoch) and the iterator position is saved.
A resumed run therefore replays exactly what an uninterrupted run would have done.

Checkpoints (Orbax CheckpointManager in RUN_DIR/checkpoints, async): items params, opt_state,
frozen, meta {step, rng}, data {iterator state}; keep the `train.keep` latest plus the best by
`eval_loss`. See `fairjax.io.run_dir` for the run-dir layout.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from fairjax import faults, parallel
from fairjax.agents.base import Algorithm, Producer, count_attended
from fairjax.errors import ConfigError
from fairjax.io import run_dir as rd
from fairjax.io.checkpoint import save_model_dir
from fairjax.losses.common import sharded_batch
from fairjax.optim import OptimConfig, make_optimizer, make_schedule
from fairjax.parallel import MESH_IMPLS, DistributedConfig, MeshConfig
from fairjax.typed_config import check_choice, check_positive, typed_block

log = logging.getLogger("fairjax.train")
PyTree = Any


class NonFiniteLossError(FloatingPointError):
    """The loss (or gradient norm) became NaN/inf; `.step` is the optimizer step (1-based)."""

    def __init__(self, step: int, metrics: dict):
        self.step = step
        self.metrics = metrics
        shown = {k: v for k, v in metrics.items() if k in ("loss", "grad_norm")}
        super().__init__(
            f"non-finite loss at optimizer step {step} ({shown}); training stopped. The update of "
            f"this step was not applied and no checkpoint after the last good one was written.")


# =========================================================================== config
@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The `train` block (configs/common.py): length (`steps`, or `epochs` when steps == 0),
    the intervals of metric lines / evaluations / checkpoints (0 = only at the end), eval
    batches per evaluation, checkpoints kept, resume, and the loop's switches."""

    steps: int = 150
    epochs: int = 0
    log_every: int = 10
    eval_every: int = 50
    eval_batches: int = 4
    save_every: int = 50
    keep: int = 2
    resume: bool = True
    async_checkpoint: bool = True
    progress: bool = True
    tensorboard: bool = True
    check_finite: bool = True

    def __post_init__(self):
        for name in ("log_every", "keep", "eval_batches"):
            check_positive(f"train.{name}", getattr(self, name))
        for name in ("steps", "epochs", "eval_every", "save_every"):
            check_positive(f"train.{name}", getattr(self, name), allow_zero=True)
        if self.steps == 0 and self.epochs == 0:
            raise ConfigError("config.train.steps and config.train.epochs are both 0; set one")


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """Everything the loop reads of a run config, typed: the train / optim / mesh /
    distributed blocks, `seed` (the state's root key), `name` (config.algorithm: the progress
    bar's label and the fault-injection stage, `faults.inject`; never interpreted) and
    `run_dir` (the default run directory)."""

    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    distributed: DistributedConfig = dataclasses.field(default_factory=DistributedConfig)
    seed: int = 0
    name: str = ""
    run_dir: str = ""

    @classmethod
    def from_config(cls, cfg: Any) -> "LoopConfig":
        """The one conversion of a run config's loop blocks (ConfigError naming
        `config.<block>.<field>` for an unknown field, `config.<block>...` for a bad value)."""
        return cls(train=typed_block(cfg.get("train"), TrainConfig, "train"),
                   optim=typed_block(cfg.get("optim"), OptimConfig, "optim"),
                   mesh=typed_block(cfg.get("mesh"), MeshConfig, "mesh"),
                   distributed=typed_block(cfg.get("distributed"), DistributedConfig,
                                           "distributed"),
                   seed=int(cfg.get("seed", 0)), name=str(cfg.get("algorithm", "")),
                   run_dir=str(cfg.get("run_dir", "") or ""))


# =========================================================================== setup
@dataclasses.dataclass
class Setup:
    """Everything the loop needs besides the config.

    algorithm: the objective; train_data: iterator of process-local GLOBAL-step batches
    (numpy dicts, batch dim = rows of `optim.batch_size * optim.grad_accum` owned by this
    process) with `state() -> dict` / `restore(dict)`; eval_data: callable returning a fresh
    iterable of eval batches (rows of `optim.batch_size`), or None; rules: partition rules
    (regex, PartitionSpec) ending with a catch-all; model_config / tokenizer / initial_lm_params:
    written to RUN_DIR/model (skipped when None); steps_per_epoch: optimizer steps per epoch
    (for `train.epochs`); eval_generate_fn(params, frozen, step) -> metrics dict: optional hook
    (generation + reward) run at each evaluation on process 0's view; producer: an
    `agents.base.Producer` that turns each train_data batch into the step's batch with the
    current state (online RL; None: train on the train_data batches); data_stats: one dict per
    data source (`fairjax.data.sources.SourceStats.to_dict`: path, kept, skipped, line),
    printed at the start and written to RUN_DIR/summary.json;
    count_tokens(host batch) -> tokens it trains on (the objective's `count_tokens`: tokens/s).
    """

    algorithm: Algorithm
    train_data: Any
    eval_data: Optional[Callable[[], Iterable[dict]]] = None
    rules: Sequence[tuple[str, P]] = ((".*", P()),)
    model_config: Any = None
    tokenizer: Any = None
    initial_lm_params: Any = None
    steps_per_epoch: Optional[int] = None
    eval_generate_fn: Optional[Callable[[PyTree, PyTree, int], dict]] = None
    producer: Optional[Producer] = None
    data_stats: Sequence[dict] = ()
    count_tokens: Callable[[dict], int] = count_attended


@dataclasses.dataclass
class RunResult:
    """What `train` returns: run_dir, last step, its train metrics, the last eval metrics,
    best step (by eval loss), the final (device) state {params, opt_state, frozen, step, rng} and
    the data sources' read counts (records kept / skipped)."""

    run_dir: Path
    step: int
    metrics: dict
    eval_metrics: dict
    best_step: Optional[int]
    state: dict
    data_stats: list = dataclasses.field(default_factory=list)


# =========================================================================== the step
def stack_micro(batch: dict, accum: int, updates: int = 1) -> dict:
    """Gradient accumulation layout: [accum * b, ...] process-local rows -> [accum, b, ...]
    (micro-batch i = rows i*b .. (i+1)*b - 1); with `updates` > 1, [updates * accum * b, ...] ->
    [updates, accum, b, ...] (update u = the u-th consecutive block of rows)."""
    out, lead = {}, (accum,) if updates == 1 else (updates, accum)
    for k, v in batch.items():
        v = np.asarray(v)
        if v.shape[0] % (accum * updates):
            raise ConfigError(f"batch key {k!r} has {v.shape[0]} rows, not divisible by "
                              f"optim.grad_accum={accum} x {updates} updates")
        out[k] = v.reshape(lead + (v.shape[0] // (accum * updates),) + v.shape[1:])
    return out


def accumulate_grads(algorithm: Algorithm, params: PyTree, frozen: PyTree, batch: dict,
                     key: jax.Array) -> tuple[PyTree, jax.Array, dict]:
    """Gradient accumulation: scan `Algorithm.loss` over batch `[accum, b, ...]` (micro-batch i
    with key fold_in(key, i)); returns (mean grads, mean loss, mean metrics)."""
    accum = jax.tree.leaves(batch)[0].shape[0]
    grad_fn = jax.value_and_grad(algorithm.loss, has_aux=True)

    def micro(grads, xs):
        mb, i = xs
        (loss, metrics), g = grad_fn(params, frozen, mb, jax.random.fold_in(key, i))
        return jax.tree.map(jnp.add, grads, g), (loss, metrics)

    zeros = jax.tree.map(jnp.zeros_like, params)
    grads, (losses, metrics) = jax.lax.scan(micro, zeros, (batch, jnp.arange(accum)))
    grads = jax.tree.map(lambda g: g / accum, grads)
    metrics = jax.tree.map(lambda m: jnp.mean(m.astype(jnp.float32)), metrics)
    return grads, jnp.mean(losses), metrics


GradsFn = Callable[[PyTree, PyTree, dict, jax.Array], tuple[PyTree, jax.Array, dict]]


def make_train_step(algorithm: Algorithm, optimizer: optax.GradientTransformation,
                    check_finite: bool = True, grads_fn: Optional[GradsFn] = None,
                    updates: int = 1) -> Callable[[dict, dict], tuple[dict, dict]]:
    """Pure step `(state, batch[accum, B, ...]) -> (state, metrics)`; see module docstring.
    `grads_fn(params, frozen, batch, key) -> (grads, loss, metrics)`: default `accumulate_grads`
    on the global batch (GSPMD); `shard_map_grads` for explicit collectives. `updates` > 1: the
    batch is `[updates, accum, B, ...]`, scanned as that many optimizer updates (update u with
    key fold_in(step key, u)); metrics, loss and grad_norm get a leading [updates] axis, the
    step is finite when every update is, and `update_frozen` runs once after the last."""
    if grads_fn is None:
        grads_fn = functools.partial(accumulate_grads, algorithm)

    def grads_and_norm(params, frozen, batch, key):
        grads, loss, metrics = grads_fn(params, frozen, batch, key)
        return grads, dict(metrics, loss=loss, grad_norm=optax.global_norm(grads))

    def is_finite(metrics):  # [] or [updates] bool
        return jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])

    def apply(params, opt_state, grads):
        deltas, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, deltas), opt_state

    def step_fn(state: dict, batch: dict) -> tuple[dict, dict]:
        params, frozen, opt_state = state["params"], state["frozen"], state["opt_state"]
        key = jax.random.fold_in(state["rng"], state["step"])
        if updates == 1:
            grads, metrics = grads_and_norm(params, frozen, batch, key)
            finite = is_finite(metrics)

            def update(operands):
                p, o, f, g = operands
                p, o = apply(p, o, g)
                return p, o, algorithm.update_frozen(p, f, state["step"] + 1)

            operands = (params, opt_state, frozen, grads)
            # The update runs inside the taken branch, so with the state donated it writes the
            # params and moments in place; `jnp.where(finite, new, old)` would keep both
            # versions alive and make XLA copy every optimizer moment each step.
            new_params, opt_state, new_frozen = (
                jax.lax.cond(finite, update, lambda ops: ops[:3], operands) if check_finite
                else update(operands))
        else:
            lead = jax.tree.leaves(batch)[0].shape[0]
            if lead != updates:
                raise ValueError(f"make_train_step(updates={updates}): batch has {lead} "
                                 "update blocks on its leading axis")

            def body(carry, xs):
                mb, u = xs
                p, o = carry
                grads, m = grads_and_norm(p, frozen, mb, jax.random.fold_in(key, u))
                return apply(p, o, grads), m

            (new_params, opt_state), metrics = jax.lax.scan(
                body, (params, opt_state), (batch, jnp.arange(updates)))
            new_frozen = algorithm.update_frozen(new_params, frozen, state["step"] + 1)
            # finite only when every update is; otherwise the step's state is rolled back
            finite = jnp.all(is_finite(metrics))
            if check_finite:
                new_params, opt_state, new_frozen = jax.tree.map(
                    lambda n, o: jnp.where(finite, n, o), (new_params, opt_state, new_frozen),
                    (params, state["opt_state"], frozen))
        new = {"params": new_params, "opt_state": opt_state, "frozen": new_frozen,
               "step": state["step"] + 1, "rng": state["rng"]}
        return new, dict(metrics, finite=finite)

    return step_fn


def make_eval_step(algorithm: Algorithm) -> Callable[[PyTree, PyTree, dict, jax.Array], dict]:
    def eval_fn(params, frozen, batch, rng):
        loss, metrics = algorithm.loss(params, frozen, batch, rng)
        return dict(jax.tree.map(lambda m: jnp.mean(m.astype(jnp.float32)), metrics), loss=loss)

    return eval_fn


# =========================================================================== state
def _put(tree: PyTree, shardings: PyTree) -> PyTree:
    """Host (or single-device) arrays -> global arrays with `shardings` (multi-host safe: every
    process holds the same full value and contributes its addressable shards)."""
    def put(x, s):
        x = np.asarray(jax.device_get(x))
        return jax.make_array_from_callback(x.shape, s, lambda idx: x[idx])

    return jax.tree.map(put, tree, shardings)


class StatePlan:
    """Abstract shapes + shardings of the train state {params, opt_state, frozen, step, rng}."""

    def __init__(self, algorithm: Algorithm, optimizer: optax.GradientTransformation,
                 mesh: Mesh, rules: Sequence[tuple[str, P]], seed: int):
        self.algorithm, self.optimizer, self.mesh = algorithm, optimizer, mesh
        self.rng = jax.random.PRNGKey(seed)
        init_rng = jax.random.fold_in(self.rng, 0x1217)
        self.init_rng = init_rng
        params, frozen = jax.eval_shape(algorithm.init, init_rng)
        opt_state = jax.eval_shape(optimizer.init, params)
        repl = parallel.replicated(mesh)
        sh = lambda t: parallel.named_shardings(mesh, parallel.param_specs(t, rules, mesh))  # noqa: E731
        self.shardings = {"params": sh(params), "opt_state": sh(opt_state), "frozen": sh(frozen),
                          "step": repl, "rng": repl}
        self.abstract = {"params": params, "opt_state": opt_state, "frozen": frozen,
                         "step": jax.ShapeDtypeStruct((), jnp.int32),
                         "rng": jax.ShapeDtypeStruct(self.rng.shape, self.rng.dtype)}
        self.abstract = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
            self.abstract, self.shardings)

    def init(self) -> dict:
        """Fresh state: `Algorithm.init` (eagerly; it may close over loaded weights), placed on
        the mesh; the optimizer state is initialised under jit directly in its shardings."""
        params, frozen = self.algorithm.init(self.init_rng)
        params = _put(params, self.shardings["params"])
        frozen = _put(frozen, self.shardings["frozen"])
        opt_state = jax.jit(self.optimizer.init,
                            out_shardings=self.shardings["opt_state"])(params)
        repl = self.shardings["step"]
        return {"params": params, "opt_state": opt_state, "frozen": frozen,
                "step": jax.device_put(jnp.zeros((), jnp.int32), repl),
                "rng": jax.device_put(self.rng, repl)}


def _fsdp_dim(spec: P) -> Optional[int]:
    """The dimension `spec` shards over 'fsdp' alone (None: not sharded over 'fsdp')."""
    for i, entry in enumerate(spec):
        names = entry if isinstance(entry, tuple) else (entry,)
        if "fsdp" in names:
            if len(names) > 1:
                raise ConfigError(f"mesh.impl=shard_map: partition spec {spec} shards one dimension "
                                  "over 'fsdp' with other axes; use mesh.impl=gspmd")
            return i
    return None


def shard_map_grads(algorithm: Algorithm, plan: "StatePlan") -> GradsFn:
    """`grads_fn` of the data-parallel / FSDP step as `jax.shard_map` with explicit collectives.

    Per device: all-gather the 'fsdp'-sharded params and frozen trees (`all_gather`, tiled), run
    `accumulate_grads` on the device's rows [accum, B / (data·fsdp), ...] with the losses' batch
    reductions spanning ('data', 'fsdp') (`losses.common.sharded_batch`: global loss value, local
    gradient term), then reduce the gradients: `psum` over 'data' and `psum_scatter` over 'fsdp'
    back to each param's shard (`psum` over both for unsharded params); loss and metrics are
    `pmean`-ed. Needs mesh.tensor == 1. Dropout keys are folded with the device index."""
    mesh = plan.mesh
    if mesh.shape["tensor"] != 1:
        raise ConfigError(f"mesh.impl=shard_map runs data and fsdp parallelism; mesh.tensor="
                          f"{mesh.shape['tensor']} needs mesh.impl=gspmd")
    axes = parallel.BATCH_AXES
    is_spec = lambda x: isinstance(x, P)  # noqa: E731
    specs = {k: jax.tree.map(lambda s: s.spec, plan.shardings[k]) for k in ("params", "frozen")}

    def gather(tree, spec_tree):
        def one(x, spec):
            d = _fsdp_dim(spec)
            return x if d is None else jax.lax.all_gather(x, "fsdp", axis=d, tiled=True)
        return jax.tree.map(one, tree, spec_tree, is_leaf=is_spec)

    def reduce(g, spec):
        d = _fsdp_dim(spec)
        if d is None:
            return jax.lax.psum(g, axes)
        return jax.lax.psum_scatter(jax.lax.psum(g, "data"), "fsdp", scatter_dimension=d,
                                    tiled=True)

    def per_device(params, frozen, batch, key):
        device = jax.lax.axis_index("data") * mesh.shape["fsdp"] + jax.lax.axis_index("fsdp")
        with sharded_batch(axes):
            grads, loss, metrics = accumulate_grads(
                algorithm, gather(params, specs["params"]), gather(frozen, specs["frozen"]),
                batch, jax.random.fold_in(key, device))
        grads = jax.tree.map(reduce, grads, specs["params"], is_leaf=is_spec)
        return grads, jax.lax.pmean(loss, axes), jax.lax.pmean(metrics, axes)

    return jax.shard_map(per_device, mesh=mesh,
                         in_specs=(specs["params"], specs["frozen"], P(None, axes), P()),
                         out_specs=(specs["params"], P(), P()), check_vma=False)


def compile_train_step(algorithm: Algorithm, optimizer: optax.GradientTransformation,
                       plan: "StatePlan", check_finite: bool = True, impl: str = "gspmd",
                       updates: int = 1):
    """`make_train_step` under jit: state in/out in the plan's shardings (donated), batch
    `[accum, B, ...]` (`[updates, accum, B, ...]`) sharded over ('data', 'fsdp') on B. `impl`
    (config `mesh.impl`): "gspmd" (XLA partitions the global-batch step from the shardings) or
    "shard_map" (`shard_map_grads`)."""
    check_choice("mesh.impl", impl, MESH_IMPLS)
    grads_fn = shard_map_grads(algorithm, plan) if impl == "shard_map" else None
    lead = 1 if updates == 1 else 2
    return jax.jit(make_train_step(algorithm, optimizer, check_finite, grads_fn, updates),
                   in_shardings=(plan.shardings, parallel.batch_sharding(plan.mesh, lead)),
                   out_shardings=(plan.shardings, None), donate_argnums=(0,))


def restore_state(manager, step: int, plan: StatePlan) -> tuple[dict, dict]:
    """(state, data iterator state) of checkpoint `step`, placed in the plan's shardings."""
    return rd.restore_state(manager, step, plan.abstract)


# =========================================================================== metrics
class MetricsLogger:
    """stdout (absl/logging) + RUN_DIR/metrics.jsonl + TensorBoard (tensorboardX); process 0 only."""

    def __init__(self, run_dir: Path, tensorboard: bool, enabled: bool):
        self.enabled = enabled
        self.file = None
        self.tb = None
        if not enabled:
            return
        self.file = open(run_dir / rd.METRICS_FILE, "a", encoding="utf-8")
        if tensorboard:
            try:
                from tensorboardX import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / rd.TB_DIR))
            except ImportError:  # pragma: no cover - tensorboardX is a dependency
                log.warning("tensorboardX is not installed; no TensorBoard events")

    def write(self, step: int, split: str, metrics: dict, echo: Optional[Callable[[str], None]] = None):
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in metrics.items() if np.ndim(v) == 0 and k != "finite"}
        record = {"step": int(step), "split": split, "time": time.time(), **clean}
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.tb is not None:
            for k, v in clean.items():
                self.tb.add_scalar(f"{split}/{k}", v, step)
            self.tb.flush()
        text = f"[{split}] step {step}: " + " ".join(f"{k}={v:.5g}" for k, v in sorted(clean.items()))
        (echo or _print)(text)

    def close(self):
        if self.file is not None:
            self.file.close()
        if self.tb is not None:
            self.tb.close()


def _print(text: str) -> None:
    print(text, flush=True)


# =========================================================================== the loop
def total_steps(train: TrainConfig, steps_per_epoch: Optional[int]) -> int:
    """Optimizer steps of the run: `train.steps`, or `train.epochs` x `steps_per_epoch`."""
    if train.steps > 0:
        return int(train.steps)
    if not steps_per_epoch:
        raise ConfigError("config.train.steps=0 needs a dataset with a known size (epochs)")
    return int(train.epochs) * int(steps_per_epoch)


def _eval(eval_step, state: dict, eval_data, n_batches: int, mesh: Mesh) -> dict:
    sums: dict[str, float] = {}
    count = 0
    rng = jax.random.fold_in(state["rng"], -1 & 0x7FFFFFFF)
    for i, batch in enumerate(eval_data()):
        if i >= n_batches:
            break
        b = parallel.shard_batch(batch, mesh, leading_unsharded=0)
        m = jax.device_get(eval_step(state["params"], state["frozen"], b, jax.random.fold_in(rng, i)))
        for k, v in m.items():
            sums[k] = sums.get(k, 0.0) + float(v)
        count += 1
    return {k: v / count for k, v in sums.items()} if count else {}


def run(loop: LoopConfig, run_dir: Optional[str | os.PathLike],
        setup: Union[Setup, Callable[[], Setup]]) -> RunResult:
    """Train `setup` (or `setup()`, called once the run dir and mesh exist) with the loop settings
    `loop` (train, optim, mesh, distributed, seed) into `run_dir` (default loop.run_dir); resume
    from its latest checkpoint when `loop.train.resume`. The caller converts the run config once
    (`LoopConfig.from_config`, which checks the blocks' values; `fairjax.train.build.train` also
    writes the resolved config into the run dir)."""
    import orbax.checkpoint as ocp  # noqa: F401  (fail early if absent)

    if not isinstance(loop, LoopConfig):
        raise TypeError(f"loop.run takes the typed LoopConfig (LoopConfig.from_config(cfg)), got "
                        f"{type(loop).__name__}")
    train, optim = loop.train, loop.optim
    if not (run_dir or loop.run_dir):
        raise ConfigError("loop.run: no run_dir given and config.run_dir is empty")
    run_dir = Path(run_dir or loop.run_dir).absolute()
    main = parallel.is_main_process()
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
    mesh = parallel.make_mesh(loop.mesh)
    dp = parallel.data_parallel_size(mesh)
    if optim.batch_size % dp:
        raise ConfigError(f"config.optim.batch_size={optim.batch_size} is not divisible by the "
                          f"{dp} batch shards of mesh {dict(mesh.shape)} (data x fsdp)")
    if not isinstance(setup, Setup):
        setup = setup()
    n_steps = total_steps(train, setup.steps_per_epoch)
    producer = setup.producer
    updates = 1 if producer is None else int(producer.updates)  # optimizer updates per step
    optimizer = make_optimizer(optim, n_steps * updates)
    schedule = make_schedule(optim, n_steps * updates)
    plan = StatePlan(setup.algorithm, optimizer, mesh, setup.rules, loop.seed)
    state_sh = plan.shardings
    step_fn = compile_train_step(setup.algorithm, optimizer, plan, train.check_finite,
                                 impl=loop.mesh.impl, updates=updates)
    eval_step = jax.jit(make_eval_step(setup.algorithm),
                        in_shardings=(state_sh["params"], state_sh["frozen"],
                                      parallel.batch_sharding(mesh, 0), parallel.replicated(mesh)))
    manager = rd.checkpoint_manager(run_dir, keep=train.keep,
                                    async_save=train.async_checkpoint)
    latest = manager.latest_step() if train.resume else None
    if latest is not None:
        state, data_state = restore_state(manager, latest, plan)
        if data_state and hasattr(setup.train_data, "restore"):
            setup.train_data.restore(data_state)
        if main:
            _print(f"resumed {run_dir} from step {latest}")
    else:
        if manager.latest_step() is not None:
            raise ConfigError(f"{run_dir}/checkpoints already holds checkpoints and "
                              "config.train.resume=False; choose a new run_dir")
        state = plan.init()
        if main and setup.model_config is not None and setup.initial_lm_params is not None:
            _save_model_dir(run_dir, setup)
    start = int(jax.device_get(state["step"]))
    if main:  # rows of the steps this launch re-runs (logged before a crash) are dropped
        dropped = rd.prune_metrics(run_dir, start)
        if dropped:
            _print(f"dropped {dropped} metric rows logged after step {start} by the interrupted run")
        for stats in setup.data_stats:
            _print(stats["line"])
    logger = MetricsLogger(run_dir, train.tensorboard, enabled=main)
    accum = int(optim.grad_accum)
    bar = _progress(train, loop.name, main, start, n_steps)
    window: list[dict] = []
    last_metrics: dict = {}
    eval_metrics: dict = {}
    pending: Optional[tuple[int, Any]] = None
    tokens_window, t_window = 0, time.perf_counter()

    watchdog = _Watchdog(loop.distributed.step_timeout_s if jax.process_count() > 1 else 0)

    def check(pending_item) -> dict:
        s, dev_metrics = pending_item
        m = {k: float(v) for k, v in jax.device_get(dev_metrics).items()}
        watchdog.beat(s)
        if train.check_finite and not m.get("finite", 1.0):
            raise NonFiniteLossError(s, m)
        return m

    try:
        step = start
        while step < n_steps:
            try:
                batch = next(setup.train_data)
            except StopIteration:
                log.warning("training data exhausted at step %d", step)
                break
            if producer is not None:  # e.g. rollouts of the current policy (reads the state)
                batch, info = producer.produce(state, batch)
            tokens = setup.count_tokens(batch) * jax.process_count()
            t_step = time.perf_counter()
            gbatch = parallel.shard_batch(stack_micro(batch, accum, updates), mesh,
                                          leading_unsharded=1 if updates == 1 else 2)
            state, dev_metrics = step_fn(state, gbatch)
            if producer is not None:  # the next batch reads these params: wait (and time) here
                host = jax.device_get(dev_metrics)
                dev_metrics = producer.summarize(host, info, time.perf_counter() - t_step)
                tokens = int(dev_metrics.get("tokens", tokens))
            step += 1
            if pending is not None:
                window.append(check(pending))
            pending = (step, dev_metrics)
            tokens_window += tokens
            is_last = step == n_steps
            do_log = step % train.log_every == 0 or is_last
            do_eval = setup.eval_data is not None and (
                (train.eval_every and step % train.eval_every == 0) or is_last)
            do_save = (train.save_every and step % train.save_every == 0) or do_eval or is_last
            if do_log or do_eval or do_save:
                window.append(check(pending))
                pending = None
            if bar is not None:
                bar.update(1)
            if do_log and window:
                dt = max(time.perf_counter() - t_window, 1e-9)
                last_metrics = {k: float(np.mean([w[k] for w in window])) for k in window[-1]}
                last_metrics.update(lr=float(schedule(step * updates - 1)),
                                    tokens_per_s=tokens_window / dt)
                logger.write(step, "train", last_metrics,
                             echo=(bar.write if bar is not None else None))
                if bar is not None:
                    bar.set_postfix(loss=f"{last_metrics['loss']:.4g}",
                                    tok_s=f"{last_metrics['tokens_per_s']:.0f}")
                window, tokens_window, t_window = [], 0, time.perf_counter()
            ckpt_metrics = None
            if do_eval:
                eval_metrics = _eval(eval_step, state, setup.eval_data, train.eval_batches,
                                     mesh)
                if setup.eval_generate_fn is not None:
                    eval_metrics.update(setup.eval_generate_fn(state["params"], state["frozen"], step))
                if eval_metrics:
                    logger.write(step, "eval", eval_metrics,
                                 echo=(bar.write if bar is not None else None))
                    ckpt_metrics = {"eval_loss": eval_metrics["loss"]}
                t_window = time.perf_counter()
            if do_save:
                data_state = setup.train_data.state() if hasattr(setup.train_data, "state") else {}
                manager.save(step, args=rd.state_items(state, data_state), metrics=ckpt_metrics,
                             force=True)
            faults.inject(loop.name, step, jax.process_index())
        if pending is not None:
            check(pending)
    finally:
        watchdog.beat(watchdog.step)  # the final save wait is covered too
        manager.wait_until_finished()
        watchdog.stop()
        if bar is not None:
            bar.close()
        logger.close()
    best = rd.best_step(manager)
    manager.close()
    if not last_metrics and not eval_metrics:  # a relaunch of a finished run trains nothing:
        previous = rd.read_summary(run_dir)     # its summary keeps the metrics it ended with
        last_metrics = previous.get("metrics", {}) or {}
        eval_metrics = previous.get("eval_metrics", {}) or {}
    result = RunResult(run_dir=run_dir, step=int(jax.device_get(state["step"])),
                       metrics=last_metrics, eval_metrics=eval_metrics, best_step=best,
                       state=state, data_stats=list(setup.data_stats))
    if main:
        rd.write_summary(run_dir, {"step": result.step, "best_step": best, "metrics": last_metrics,
                                   "eval_metrics": eval_metrics, "data": result.data_stats})
    return result


class _Watchdog:
    """Multi-process runs: if no optimizer step completes for `timeout_s` seconds after the
    first one (a peer died and a collective waits for it forever), print an error and exit
    the process with status 70, so a dead worker never leaves the others hanging. 0 = off."""

    def __init__(self, timeout_s: float):
        import threading

        self.timeout_s, self.last, self.step = float(timeout_s), None, 0
        self._stop = threading.Event()
        if self.timeout_s > 0:
            threading.Thread(target=self._run, daemon=True, name="fairjax-watchdog").start()

    def beat(self, step: int) -> None:
        self.last, self.step = time.monotonic(), step

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            if self.last is not None and time.monotonic() - self.last > self.timeout_s:
                print(f"fairjax: process {jax.process_index()}: no progress for "
                      f"{self.timeout_s:.0f}s after step {self.step} (a peer process probably "
                      "died); exiting", file=sys.stderr, flush=True)
                os._exit(70)


def _progress(train: TrainConfig, name: str, main: bool, start: int, n_steps: int):
    """tqdm bar labelled `name` on process 0 when `train.progress` (None otherwise)."""
    if not (main and train.progress):
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        return None
    return tqdm(total=n_steps, initial=start, unit="step", dynamic_ncols=True,
                desc=name)


def _save_model_dir(run_dir: Path, setup: Setup) -> None:
    """Process 0 writes RUN_DIR/model. In a multi-process run Orbax's StandardCheckpointer
    would wait at barriers for the other processes (which do not write it): for the duration
    of this call it is restricted to process 0 (`active_processes={0}`)."""
    import functools

    import orbax.checkpoint as ocp

    original = ocp.StandardCheckpointer
    if jax.process_count() > 1:
        ocp.StandardCheckpointer = functools.partial(
            original, multiprocessing_options=ocp.options.MultiprocessingOptions(
                primary_host=0, active_processes={0}, barrier_sync_key_prefix="fairjax_model"))
    try:
        save_model_dir(run_dir / rd.MODEL_DIR, setup.model_config,
                       jax.device_get(setup.initial_lm_params), setup.tokenizer, overwrite=True)
    finally:
        ocp.StandardCheckpointer = original
