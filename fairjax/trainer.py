"""The training loop: compiled step, evaluation, metrics, checkpoints and exact resume.

`train(config, run_dir=None, setup=None) -> RunResult` is the library entry point (the CLI
`python -m fairjax.train` is a thin wrapper; end-to-end pipelines chain it: BC -> ILQL -> eval).

One optimizer step = one call of the jit-compiled `train_step` (buffer donation of the state):
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

Randomness: the key of step s is `fold_in(rng, s)` with `rng` from the config seed and saved in
the checkpoint; the data order is a function of (seed, epoch) and the iterator position is saved.
A resumed run therefore replays exactly what an uninterrupted run would have done.

Checkpoints (Orbax CheckpointManager in RUN_DIR/checkpoints, async): items params, opt_state,
frozen, meta {step, rng}, data {iterator state}; keep the `train.keep` latest plus the best by
`eval_loss`. See `fairjax.io.run_dir` for the run-dir layout.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from fairjax import parallel
from fairjax.agents.base import Algorithm
from fairjax.io import run_dir as rd
from fairjax.io.errors import ConfigError
from fairjax.optim import make_optimizer, make_schedule

log = logging.getLogger("fairjax.trainer")
PyTree = Any

ALGORITHMS = ("bc", "ilql", "alol", "phf", "dpo")
PHF_ALIASES = {"filter": "filtering", "ul": "unlikelihood"}


class NonFiniteLossError(FloatingPointError):
    """The loss (or gradient norm) became NaN/inf; `.step` is the optimizer step (1-based)."""

    def __init__(self, step: int, metrics: dict):
        self.step = step
        self.metrics = metrics
        shown = {k: v for k, v in metrics.items() if k in ("loss", "grad_norm")}
        super().__init__(
            f"non-finite loss at optimizer step {step} ({shown}); training stopped. The update of "
            f"this step was not applied and no checkpoint after the last good one was written.")


# =========================================================================== config checks
def _choice(name: str, value: Any, choices: Sequence[Any]) -> None:
    if value not in choices:
        raise ConfigError(f"config.{name}={value!r}; expected one of {list(choices)}")


def _positive(cfg: Any, name: str, allow_zero: bool = False) -> None:
    v = cfg
    for part in name.split("."):
        v = getattr(v, part)
    if v < 0 or (v == 0 and not allow_zero):
        raise ConfigError(f"config.{name}={v!r}; expected {'>= 0' if allow_zero else '> 0'}")


def validate_config(cfg: Any) -> None:
    """Ranges and choices that ConfigDict's type checks cannot express. Raises ConfigError
    naming the key. Runs before any work (no files written, no devices touched)."""
    _choice("algorithm", cfg.algorithm, ALGORITHMS)
    _choice("model.dtype", cfg.model.dtype, ("float32", "bfloat16", "float16"))
    _choice("model.remat", cfg.model.remat, ("none", "block", "dots"))
    _choice("data.on_error", cfg.data.on_error, ("raise", "skip"))
    _choice("optim.schedule", cfg.optim.schedule, ("cosine", "linear", "constant"))
    for name in ("optim.lr", "optim.batch_size", "optim.grad_accum", "train.log_every",
                 "train.keep", "train.eval_batches", "data.max_len"):
        _positive(cfg, name)
    for name in ("optim.weight_decay", "optim.warmup_steps", "train.steps", "train.epochs",
                 "train.eval_every", "train.save_every", "optim.end_lr_ratio"):
        _positive(cfg, name, allow_zero=True)
    if cfg.train.steps == 0 and cfg.train.epochs == 0:
        raise ConfigError("config.train.steps and config.train.epochs are both 0; set one")
    if not (0.0 <= cfg.optim.b1 < 1.0 and 0.0 <= cfg.optim.b2 < 1.0):
        raise ConfigError(f"config.optim.b1/b2={cfg.optim.b1}/{cfg.optim.b2}; expected in [0, 1)")
    buckets = tuple(cfg.data.buckets or ())
    if any(int(b) <= 0 for b in buckets) or list(buckets) != sorted(buckets):
        raise ConfigError(f"config.data.buckets={buckets}; expected increasing positive lengths")
    if str(cfg.init.step) not in ("best", "latest") and not str(cfg.init.step).isdigit():
        raise ConfigError(f"config.init.step={cfg.init.step!r}; expected best | latest | a step")
    if cfg.algorithm == "ilql":
        c = cfg.ilql
        if not 0.0 < c.tau < 1.0:
            raise ConfigError(f"config.ilql.tau={c.tau}; the expectile must be in (0, 1)")
        if not 0.0 <= c.gamma <= 1.0:
            raise ConfigError(f"config.ilql.gamma={c.gamma}; expected in [0, 1]")
        if not 0.0 <= c.alpha <= 1.0:
            raise ConfigError(f"config.ilql.alpha={c.alpha}; expected in [0, 1]")
        if c.cql_temp <= 0:
            raise ConfigError(f"config.ilql.cql_temp={c.cql_temp}; expected > 0")
    if cfg.algorithm == "alol":
        from fairjax.losses.alol import ALGORITHMS as ALOL

        _choice("alol.algorithm", cfg.alol.algorithm, ALOL)
        _choice("alol.reward_transform", cfg.alol.reward_transform, ("none", "sigmoid"))
    if cfg.algorithm == "phf":
        from fairjax.losses.phf import OBJECTIVES

        _choice("phf.objective", PHF_ALIASES.get(cfg.phf.objective, cfg.phf.objective), OBJECTIVES)
    if cfg.algorithm == "dpo":
        _choice("dpo.loss_type", cfg.dpo.loss_type, ("sigmoid", "ipo"))
        if not 0.0 <= cfg.dpo.label_smoothing < 0.5:
            raise ConfigError(f"config.dpo.label_smoothing={cfg.dpo.label_smoothing}; "
                              "expected in [0, 0.5)")


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
    (generation + reward) run at each evaluation on process 0's view.
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


@dataclasses.dataclass
class RunResult:
    """What `train` returns: run_dir, last step, its train metrics, the last eval metrics,
    best step (by eval loss) and the final (device) state {params, opt_state, frozen, step, rng}."""

    run_dir: Path
    step: int
    metrics: dict
    eval_metrics: dict
    best_step: Optional[int]
    state: dict


# =========================================================================== the step
def _stack_micro(batch: dict, accum: int) -> dict:
    """[accum * b, ...] process-local rows -> [accum, b, ...] (micro-batch i = rows i*b..)."""
    out = {}
    for k, v in batch.items():
        v = np.asarray(v)
        if v.shape[0] % accum:
            raise ConfigError(f"batch key {k!r} has {v.shape[0]} rows, not divisible by "
                              f"optim.grad_accum={accum}")
        out[k] = v.reshape((accum, v.shape[0] // accum) + v.shape[1:])
    return out


def make_train_step(algorithm: Algorithm, optimizer: optax.GradientTransformation,
                    check_finite: bool = True) -> Callable[[dict, dict], tuple[dict, dict]]:
    """Pure step `(state, batch[accum, B, ...]) -> (state, metrics)`; see module docstring."""

    def step_fn(state: dict, batch: dict) -> tuple[dict, dict]:
        params, frozen = state["params"], state["frozen"]
        key = jax.random.fold_in(state["rng"], state["step"])
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
        loss = jnp.mean(losses)
        grad_norm = optax.global_norm(grads)
        updates, opt_state = optimizer.update(grads, state["opt_state"], params)
        new_params = optax.apply_updates(params, updates)
        new_frozen = algorithm.update_frozen(new_params, frozen, state["step"] + 1)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        new = {"params": new_params, "opt_state": opt_state, "frozen": new_frozen}
        if check_finite:
            old = {"params": params, "opt_state": state["opt_state"], "frozen": frozen}
            new = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
        new.update(step=state["step"] + 1, rng=state["rng"])
        metrics = dict(metrics, loss=loss, grad_norm=grad_norm, finite=finite)
        return new, metrics

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


def compile_train_step(algorithm: Algorithm, optimizer: optax.GradientTransformation,
                       plan: "StatePlan", check_finite: bool = True):
    """`make_train_step` under jit: state in/out in the plan's shardings (donated), batch
    `[accum, B, ...]` sharded over ('data', 'fsdp') on B."""
    return jax.jit(make_train_step(algorithm, optimizer, check_finite),
                   in_shardings=(plan.shardings, parallel.batch_sharding(plan.mesh, 1)),
                   out_shardings=(plan.shardings, None), donate_argnums=(0,))


# =========================================================================== checkpoints
def _state_items(state: dict, data_state: dict):
    """Orbax Composite of a state. Trees without arrays (e.g. BC's empty `frozen`) are not
    saved (Orbax refuses empty items); `restore_state` rebuilds them from the plan."""
    import orbax.checkpoint as ocp

    items = {k: ocp.args.StandardSave(state[k]) for k in ("params", "opt_state", "frozen")
             if jax.tree.leaves(state[k])}
    items["meta"] = ocp.args.StandardSave({"step": state["step"], "rng": state["rng"]})
    items["data"] = ocp.args.JsonSave(data_state)
    return ocp.args.Composite(**items)


def restore_state(manager, step: int, plan: StatePlan) -> tuple[dict, dict]:
    """(state, data iterator state) of checkpoint `step`, placed in the plan's shardings."""
    import orbax.checkpoint as ocp

    a = plan.abstract
    trees = [k for k in ("params", "opt_state", "frozen") if jax.tree.leaves(a[k])]
    r = manager.restore(step, args=ocp.args.Composite(
        **{k: ocp.args.StandardRestore(a[k]) for k in trees},
        meta=ocp.args.StandardRestore({"step": a["step"], "rng": a["rng"]}),
        data=ocp.args.JsonRestore(),
    ))
    state = {k: (r[k] if k in trees else a[k]) for k in ("params", "opt_state", "frozen")}
    state.update(step=r["meta"]["step"], rng=r["meta"]["rng"])
    return state, dict(r["data"] or {})


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


def _tokens_in(batch: dict) -> int:
    for key in ("attn_mask", "chosen_attn_mask"):
        if key in batch:
            n = float(np.asarray(batch[key]).sum())
            return int(n * (2 if key.startswith("chosen") else 1))
    for key in ("tokens", "input_ids"):
        if key in batch:
            return int(np.asarray(batch[key]).size)
    return 0


# =========================================================================== the loop
def total_steps(cfg: Any, steps_per_epoch: Optional[int]) -> int:
    if cfg.train.steps > 0:
        return int(cfg.train.steps)
    if not steps_per_epoch:
        raise ConfigError("config.train.steps=0 needs a dataset with a known size (epochs)")
    return int(cfg.train.epochs) * int(steps_per_epoch)


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


def train(cfg: Any, run_dir: Optional[str | os.PathLike] = None,
          setup: Optional[Setup] = None) -> RunResult:
    """Train `cfg` into `run_dir` (default cfg.run_dir); resume from its latest checkpoint when
    `cfg.train.resume`. `setup` overrides what is otherwise built from the config
    (`build_setup`): tests and pipelines pass their own algorithm/data."""
    import orbax.checkpoint as ocp  # noqa: F401  (fail early if absent)

    validate_config(cfg)
    run_dir = Path(run_dir or cfg.run_dir).absolute()
    main = parallel.is_main_process()
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        rd.save_config(cfg, run_dir)
    mesh = parallel.make_mesh(cfg.mesh)
    dp = parallel.data_parallel_size(mesh)
    if cfg.optim.batch_size % dp:
        raise ConfigError(f"config.optim.batch_size={cfg.optim.batch_size} is not divisible by the "
                          f"{dp} batch shards of mesh {dict(mesh.shape)} (data x fsdp)")
    if setup is None:
        setup = build_setup(cfg, run_dir)
    n_steps = total_steps(cfg, setup.steps_per_epoch)
    optimizer = make_optimizer(cfg.optim, n_steps)
    schedule = make_schedule(cfg.optim, n_steps)
    plan = StatePlan(setup.algorithm, optimizer, mesh, setup.rules, cfg.seed)
    state_sh = plan.shardings
    step_fn = compile_train_step(setup.algorithm, optimizer, plan, cfg.train.check_finite)
    eval_step = jax.jit(make_eval_step(setup.algorithm),
                        in_shardings=(state_sh["params"], state_sh["frozen"],
                                      parallel.batch_sharding(mesh, 0), parallel.replicated(mesh)))
    manager = rd.checkpoint_manager(run_dir, keep=cfg.train.keep,
                                    async_save=cfg.train.async_checkpoint)
    latest = manager.latest_step() if cfg.train.resume else None
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
    logger = MetricsLogger(run_dir, cfg.train.tensorboard, enabled=main)
    accum = int(cfg.optim.grad_accum)
    bar = _progress(cfg, main, start, n_steps)
    window: list[dict] = []
    last_metrics: dict = {}
    eval_metrics: dict = {}
    pending: Optional[tuple[int, Any]] = None
    tokens_window, t_window = 0, time.perf_counter()

    watchdog = _Watchdog(cfg.distributed.step_timeout_s if jax.process_count() > 1 else 0)

    def check(pending_item) -> dict:
        s, dev_metrics = pending_item
        m = {k: float(v) for k, v in jax.device_get(dev_metrics).items()}
        watchdog.beat(s)
        if cfg.train.check_finite and not m.get("finite", 1.0):
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
            tokens = _tokens_in(batch) * jax.process_count()
            gbatch = parallel.shard_batch(_stack_micro(batch, accum), mesh, leading_unsharded=1)
            state, dev_metrics = step_fn(state, gbatch)
            step += 1
            if pending is not None:
                window.append(check(pending))
            pending = (step, dev_metrics)
            tokens_window += tokens
            is_last = step == n_steps
            do_log = step % cfg.train.log_every == 0 or is_last
            do_eval = setup.eval_data is not None and (
                (cfg.train.eval_every and step % cfg.train.eval_every == 0) or is_last)
            do_save = (cfg.train.save_every and step % cfg.train.save_every == 0) or do_eval or is_last
            if do_log or do_eval or do_save:
                window.append(check(pending))
                pending = None
            if bar is not None:
                bar.update(1)
            if do_log and window:
                dt = max(time.perf_counter() - t_window, 1e-9)
                last_metrics = {k: float(np.mean([w[k] for w in window])) for k in window[-1]}
                last_metrics.update(lr=float(schedule(step - 1)), tokens_per_s=tokens_window / dt)
                logger.write(step, "train", last_metrics,
                             echo=(bar.write if bar is not None else None))
                if bar is not None:
                    bar.set_postfix(loss=f"{last_metrics['loss']:.4g}",
                                    tok_s=f"{last_metrics['tokens_per_s']:.0f}")
                window, tokens_window, t_window = [], 0, time.perf_counter()
            ckpt_metrics = None
            if do_eval:
                eval_metrics = _eval(eval_step, state, setup.eval_data, cfg.train.eval_batches, mesh)
                if setup.eval_generate_fn is not None:
                    eval_metrics.update(setup.eval_generate_fn(state["params"], state["frozen"], step))
                if eval_metrics:
                    logger.write(step, "eval", eval_metrics,
                                 echo=(bar.write if bar is not None else None))
                    ckpt_metrics = {"eval_loss": eval_metrics["loss"]}
                t_window = time.perf_counter()
            if do_save:
                data_state = setup.train_data.state() if hasattr(setup.train_data, "state") else {}
                manager.save(step, args=_state_items(state, data_state), metrics=ckpt_metrics,
                             force=True)
            _maybe_inject_fault(step)
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
    return RunResult(run_dir=run_dir, step=int(jax.device_get(state["step"])),
                     metrics=last_metrics, eval_metrics=eval_metrics, best_step=best, state=state)


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


FAULT_ENV = "FAIRJAX_FAULT"


def _maybe_inject_fault(step: int) -> None:
    """Fault injection for the reliability tests: FAIRJAX_FAULT="STEP[:PROCESS[:MODE]]" makes
    process PROCESS (default 0) die right after optimizer step STEP (and its checkpoint save
    request, possibly still writing asynchronously): MODE "kill" = SIGKILL (default), "exit" =
    os._exit(3). Unset in normal runs."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    parts = spec.split(":")
    if int(parts[0]) != step or (int(parts[1]) if len(parts) > 1 else 0) != jax.process_index():
        return
    if (parts[2] if len(parts) > 2 else "kill") == "exit":
        os._exit(3)
    import signal

    os.kill(os.getpid(), signal.SIGKILL)


def _progress(cfg: Any, main: bool, start: int, n_steps: int):
    if not (main and cfg.train.progress):
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        return None
    return tqdm(total=n_steps, initial=start, unit="step", dynamic_ncols=True,
                desc=f"{cfg.algorithm}")


def _save_model_dir(run_dir: Path, setup: Setup) -> None:
    """Process 0 writes RUN_DIR/model. In a multi-process run Orbax's StandardCheckpointer
    would wait at barriers for the other processes (which do not write it): for the duration
    of this call it is restricted to process 0 (`active_processes={0}`)."""
    import functools

    import orbax.checkpoint as ocp

    from fairjax.io.checkpoint import save_model_dir

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


# =========================================================================== build from config
def _demo_paths(cfg: Any, run_dir: Path) -> dict:
    """The synthetic demo corpus in RUN_DIR/data (written by process 0, deterministic)."""
    from fairjax.data.demo import write_demo

    d = run_dir / "data"
    paths = {k: str(d / f"jobs_{k}.jsonl") for k in ("train", "eval")}
    if parallel.is_main_process() and not all(os.path.isfile(p) for p in paths.values()):
        write_demo(d, n_postings=cfg.data.demo_postings, seed=cfg.seed)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("fairjax demo data")
    return paths


def data_paths(cfg: Any, run_dir: Path) -> tuple[str, Optional[str]]:
    if cfg.data.train:
        for key in ("train", "eval"):
            p = getattr(cfg.data, key)
            if p and not os.path.exists(p):
                raise ConfigError(f"config.data.{key}={p!r}: no such file")
        return cfg.data.train, (cfg.data.eval or None)
    demo = _demo_paths(cfg, run_dir)
    return demo["train"], (cfg.data.eval or demo["eval"])


def demo_tokenizer(texts: Sequence[str], vocab_size: int = 1000):
    """A small byte-level BPE trained on `texts` (the demo corpus), wrapped as a fairjax
    Tokenizer; deterministic, offline. Used by `model.init="demo-tiny"`."""
    from tokenizers import Tokenizer as BPE, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from fairjax.data.tokenizer import Tokenizer

    bpe = BPE(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer_ = trainers.BpeTrainer(vocab_size=vocab_size - 6, special_tokens=["<|endoftext|>"],
                                   initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                   show_progress=False)
    bpe.train_from_iterator(list(texts), trainer=trainer_)
    hf = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>",
                                 unk_token="<|endoftext|>")
    return Tokenizer(hf, source="demo-tiny BPE")


def build_model(cfg: Any, run_dir: Path, train_path: Optional[str] = None):
    """(model_config, module, initial LM params, tokenizer) from `cfg.model` (and `cfg.init`).

    A run dir that already has model/ (a resumed run) reloads it, so the tokenizer and initial
    weights are exactly the first launch's. `demo-tiny` with `init.policy` set takes the BC
    run's model/ (same tokenizer and base weights)."""
    from fairjax.io.checkpoint import is_model_dir, load_model_dir
    from fairjax.models import build_model as module_for, load

    own = run_dir / rd.MODEL_DIR
    source = None
    if is_model_dir(own):
        source = own
    elif cfg.model.init == "demo-tiny" and cfg.init.policy:
        source = Path(cfg.init.policy) / rd.MODEL_DIR
    if source is not None:
        mcfg, params, tok = load_model_dir(source, dtype=cfg.model.dtype)
        mcfg = mcfg.replace(remat=cfg.model.remat, attention_impl=cfg.model.attention)
    elif cfg.model.init == "demo-tiny":
        from fairjax.data.jobs import JobsDataset
        from fairjax.models.gpt2 import PRESETS, init_params

        ds = JobsDataset.from_file(train_path, text_field=cfg.data.text_field,
                                   on_error=cfg.data.on_error)
        tok = demo_tokenizer([e.prompt + "\n" + e.response for e in ds],
                             cfg.model.demo_vocab_size)
        mcfg = PRESETS[cfg.model.demo_size].replace(
            vocab_size=len(tok), dtype=cfg.model.dtype, remat=cfg.model.remat,
            attention_impl=cfg.model.attention,
            max_positions=max(PRESETS[cfg.model.demo_size].max_positions, cfg.data.max_len))
        params = jax.device_get(init_params(mcfg, jax.random.PRNGKey(cfg.seed)))
    else:
        module, params, tok = load(cfg.model.init, base=cfg.model.base or None,
                                   dtype=cfg.model.dtype)
        mcfg = module.config.replace(remat=cfg.model.remat, attention_impl=cfg.model.attention)
    return mcfg, module_for(mcfg), params, tok


def _init_policy_params(cfg: Any):
    if not cfg.init.policy:
        return None
    step = cfg.init.step if cfg.init.step in ("best", "latest") else int(cfg.init.step)
    _, params = rd.restore_policy_params(cfg.init.policy, step)
    return params


def ilql_config(cfg: Any):
    """`agents.ilql.ILQLConfig` from a config's `ilql` block."""
    from fairjax.agents import ilql
    from fairjax.losses.ilql import ILQLHparams

    i = cfg.ilql
    hp = ILQLHparams(gamma=i.gamma, tau=i.tau, cql_temp=i.cql_temp, beta=i.beta,
                     exp_weights=i.exp_weights, clip_weight=i.clip_weight,
                     transition_weight=i.transition_weight, dm_margin=i.dm_margin,
                     double_q=i.double_q, awac_weight=i.awac_weight, v_weight=i.v_weight,
                     q_weight=i.q_weight, cql_weight=i.cql_weight, dm_weight=i.dm_weight,
                     mc_returns=i.mc_returns)
    return ilql.ILQLConfig(hparams=hp, alpha=i.alpha, hard_update_every=i.hard_update_every or None,
                           separate_policy=i.separate_policy, separate_target=i.separate_target,
                           detach_v=i.detach_v, detach_q=i.detach_q, train_dropout=i.train_dropout)


def build_lora_algorithm(cfg: Any, module, mcfg, base) -> Algorithm:
    """`lora.enabled`: the objective on one frozen base (the BC policy when init.policy is set)."""
    from fairjax.agents import lora as AL
    from fairjax.models.lora import LoraConfig, cast_base

    lc = LoraConfig(rank=cfg.lora.rank, alpha=cfg.lora.alpha, dropout=cfg.lora.dropout,
                    targets=cfg.lora.targets)
    base = cast_base(base, cfg.lora.base_dtype)
    if cfg.algorithm == "bc":
        from fairjax.agents import lm
        from fairjax.losses.bc import BCHparams

        c = lm.LMConfig(BCHparams(cfg.bc.transition_weight, cfg.bc.normalize))
        return AL.bc_algorithm(module, c, base, lc, mcfg.kind)
    if cfg.algorithm == "ilql":
        return AL.shared_base_ilql_algorithm(module, ilql_config(cfg), base, lc, mcfg.kind,
                                             mcfg.hidden_size, mcfg.vocab_size)
    if cfg.algorithm == "alol":
        from fairjax.agents import alol

        return AL.alol_algorithm(module, alol.ALoLConfig(hparams=alol_hparams(cfg)), base, lc,
                                 mcfg.kind)
    raise ConfigError(f"config.lora.enabled: LoRA is wired for bc, ilql and alol, not "
                      f"{cfg.algorithm!r}")


def alol_hparams(cfg: Any):
    from fairjax.losses.alol import ALoLHParams

    a = cfg.alol
    return ALoLHParams(algorithm=a.algorithm, ppo_clip=a.ppo_clip if a.ppo_clip > 0 else None,
                       kl_beta=a.kl_beta, gold_min_prob=a.gold_min_prob,
                       clamp_ref_free_advantage=a.clamp_ref_free_advantage,
                       reward_transform=a.reward_transform)


def build_algorithm(cfg: Any, module, mcfg, base_params, policy_params=None) -> Algorithm:
    """The objective of `cfg.algorithm` around `module` (policy = `policy_params` or the base)."""
    policy = base_params if policy_params is None else policy_params
    if cfg.get("lora") is not None and cfg.lora.enabled:
        return build_lora_algorithm(cfg, module, mcfg, policy)
    if cfg.algorithm == "bc":
        from fairjax.agents import lm
        from fairjax.losses.bc import BCHparams

        c = lm.LMConfig(BCHparams(cfg.bc.transition_weight, cfg.bc.normalize),
                        train_dropout=cfg.bc.train_dropout)
        return lm.make_algorithm(module, c, policy)
    if cfg.algorithm == "ilql":
        from fairjax.agents import ilql

        c = ilql_config(cfg)
        init = lambda rng: ilql.init_from_bc(c, policy, base_params, rng,  # noqa: E731
                                             mcfg.hidden_size, mcfg.vocab_size)
        return ilql.make_algorithm(module, c, init)
    if cfg.algorithm == "alol":
        from fairjax.agents import alol

        return alol.make_algorithm(module, alol.ALoLConfig(hparams=alol_hparams(cfg)), policy)
    if cfg.algorithm == "phf":
        from fairjax.agents import phf
        from fairjax.losses.phf import PHFHParams

        p = cfg.phf
        objective = PHF_ALIASES.get(p.objective, p.objective)
        if objective == "conditional":
            raise ConfigError("config.phf.objective='conditional' needs the <|aligned|>/"
                              "<|misaligned|> control tokens in the tokenizer and model "
                              "(fairjax.data.phf_transforms); it is not wired into the job-data "
                              "trainer: use mle | filtering | unlikelihood | awr | rwr")
        hp = PHFHParams(objective=objective, ul_alpha=p.ul_alpha, ul_threshold=p.ul_threshold,
                        awr_alpha=p.awr_alpha, awr_beta=p.awr_beta,
                        clip_weight_max=p.clip_weight_max, use_value_head=p.use_value_head,
                        fixed_value=p.fixed_value)
        return phf.make_algorithm(module, phf.PHFConfig(hparams=hp), policy, mcfg.hidden_size)
    if cfg.algorithm == "dpo":
        from fairjax.agents import dpo
        from fairjax.losses.dpo import DPOHParams

        d = cfg.dpo
        hp = DPOHParams(beta=d.beta, label_smoothing=d.label_smoothing, loss_type=d.loss_type,
                        reference_free=d.reference_free)
        return dpo.make_algorithm(module, dpo.DPOConfig(hparams=hp), policy)
    raise ConfigError(f"config.algorithm={cfg.algorithm!r}: not one of {ALGORITHMS}")


def _with_advantage(collate_fn, baseline: float):
    """A-LoL without a fitted value head: advantage = R - mean train reward (constant V)."""
    def wrapped(*args, **kwargs):
        b = collate_fn(*args, **kwargs)
        b["advantage"] = (np.asarray(b["sequence_reward"], np.float32) - baseline).astype(np.float32)
        return b
    return wrapped


def alol_resample(cfg: Any, episodes: list, baseline: float) -> list:
    """`alol.sampling` (A-LoL's priority sampling, data/alol_sampler.py): "uniform" keeps the data;
    "good_priority" / "good_random" draw len(episodes) examples with replacement, ∝ A⁺ = max(R −
    baseline, 0) (∝ R for wbc / r_gold / r_lol) or uniformly over A > 0, seeded by `seed`. The draw
    is made once and reshuffled every epoch (upstream draws every batch: same distribution per
    epoch)."""
    from fairjax.data.alol_sampler import PrioritySampler

    if cfg.alol.sampling == "uniform":
        return episodes
    rewards = np.asarray([e.sequence_reward for e in episodes], np.float64)
    weights = rewards - baseline if alol_hparams(cfg).needs_advantage else rewards
    try:
        sampler = PrioritySampler(weights, cfg.alol.sampling, seed=cfg.seed)
    except ValueError as e:
        raise ConfigError(f"config.alol.sampling={cfg.alol.sampling!r}: {e}") from None
    return [episodes[int(i)] for i in sampler.sample(len(episodes))]


def _with_token_scores(collate_fn):
    """PHF unlikelihood/AWR/RWR on job data: every token of an episode carries its document's
    misalignment score −reward (PHF scores are "higher = worse"; upstream gives each token its
    sentence's score, a posting has one reward)."""
    def wrapped(*args, **kwargs):
        b = collate_fn(*args, **kwargs)
        score = -np.asarray(b["sequence_reward"], np.float32)[:, None]
        b["token_scores"] = (score * np.asarray(b["attn_mask"], np.float32)).astype(np.float32)
        return b
    return wrapped


def build_data(cfg: Any, tok, train_path: str, eval_path: Optional[str]):
    """(train BatchIterator over global steps, eval factory or None, steps per epoch)."""
    import functools

    from fairjax.data.batching import BatchIterator
    from fairjax.data.jobs import JobsDataset
    from fairjax.data.layout import Truncation, collate
    from fairjax.data.task import JobRewriteTask

    if cfg.reward.scorer:
        raise ConfigError(f"config.reward.scorer={cfg.reward.scorer!r}: scoring rewards during "
                          "training is not wired yet; precompute them into the data's 'reward'")
    if cfg.reward.field != "reward":
        raise ConfigError(f"config.reward.field={cfg.reward.field!r}: the job reader takes rewards "
                          "from the 'reward' field; rename the field in the data")
    trunc = Truncation(max_len=cfg.data.max_len)
    if cfg.algorithm == "dpo":
        return build_pair_data(cfg, tok, train_path, eval_path, trunc)

    def episodes(path):
        ds = JobsDataset.from_file(path, text_field=cfg.data.text_field, on_error=cfg.data.on_error)
        if cfg.algorithm == "phf" and PHF_ALIASES.get(cfg.phf.objective, cfg.phf.objective) == "filtering":
            from fairjax.data.jobs import JobsDataset as JD

            ds = JD([e for e in ds if e.reward is not None and e.reward >= cfg.phf.threshold])
            if len(ds) == 0:
                raise ConfigError(f"phf filtering: no example of {path} has reward >= "
                                  f"{cfg.phf.threshold}")
        return JobRewriteTask(ds).episodes(tok, trunc).prepare()

    extras = cfg.algorithm in ("alol", "phf", "dpo")
    collate_fn = None
    train_eps = episodes(train_path)
    if cfg.algorithm == "phf" and PHF_ALIASES.get(cfg.phf.objective, cfg.phf.objective) in (
            "unlikelihood", "ul", "awr", "rwr"):
        collate_fn = _with_token_scores(functools.partial(collate, pad_id=tok.pad_id, extras=True))
    if cfg.algorithm == "alol":
        base = float(np.mean([e.sequence_reward for e in train_eps]))
        collate_fn = _with_advantage(functools.partial(collate, pad_id=tok.pad_id, extras=True), base)
        train_eps = alol_resample(cfg, train_eps, base)
    common = dict(pad_id=tok.pad_id, buckets=tuple(cfg.data.buckets), extras=extras,
                  collate_fn=collate_fn, process_index=jax.process_index(),
                  process_count=jax.process_count())
    rows = cfg.optim.batch_size * cfg.optim.grad_accum
    train_it = BatchIterator(train_eps, rows, seed=cfg.seed, shuffle=cfg.data.shuffle, **common)
    eval_fn = None
    if eval_path:
        eval_eps = episodes(eval_path)
        eval_fn = lambda: BatchIterator(eval_eps, cfg.optim.batch_size, shuffle=False,  # noqa: E731
                                        num_epochs=1, drop_remainder=False, **common)
    return train_it, eval_fn, train_it.batches_per_epoch()


def build_pair_data(cfg: Any, tok, train_path: str, eval_path: Optional[str], trunc):
    """DPO batches: `dpo.pairs` JSONL ({prompt, chosen, rejected}), or reward-ranked
    (posting, gender-coded counterfactual) pairs of the job data (`data.pairs.pairs_from_postings`,
    diversity reward over `reward.pool`, default: the demo candidates beside the train file)."""
    from fairjax.data.batching import BatchIterator
    from fairjax.data.jobs import JobsDataset
    from fairjax.data.pairs import layout_pairs, pair_collate, pairs_from_postings, read_pairs

    scorer = None

    def pairs(path, explicit):
        nonlocal scorer
        if explicit:
            return read_pairs(path)
        if scorer is None:
            from fairjax.rewards.diversity import DiversityScorer
            from fairjax.rewards.pool import load_pool

            pool = cfg.reward.pool or os.path.join(os.path.dirname(train_path), "candidates.jsonl")
            if not os.path.isfile(pool):
                raise ConfigError(f"dpo pairs from postings need a candidate pool: "
                                  f"config.reward.pool={cfg.reward.pool!r} (nothing at {pool})")
            scorer = DiversityScorer(load_pool(pool))
        ds = JobsDataset.from_file(path, text_field=cfg.data.text_field, on_error=cfg.data.on_error)
        return pairs_from_postings([e.prompt for e in ds], [e.response for e in ds], scorer,
                                   cfg.dpo.min_margin)

    explicit = bool(cfg.dpo.pairs)
    train = layout_pairs(tok, pairs(cfg.dpo.pairs or train_path, explicit), trunc)
    if len(train) < cfg.optim.batch_size:
        raise ConfigError(f"dpo: only {len(train)} preference pairs from "
                          f"{cfg.dpo.pairs or train_path} (< batch_size {cfg.optim.batch_size})")
    common = dict(buckets=tuple(cfg.data.buckets), process_index=jax.process_index(),
                  process_count=jax.process_count(),
                  collate_fn=pair_collate(tok.pad_id, tuple(cfg.data.buckets)))
    rows = cfg.optim.batch_size * cfg.optim.grad_accum
    train_it = BatchIterator(train, rows, seed=cfg.seed, shuffle=cfg.data.shuffle, **common)
    eval_fn = None
    ev_src = cfg.dpo.eval_pairs or (None if explicit else eval_path)
    if ev_src:
        ev = layout_pairs(tok, pairs(ev_src, bool(cfg.dpo.eval_pairs)), trunc)
        if ev:
            eval_fn = lambda: BatchIterator(ev, cfg.optim.batch_size, shuffle=False,  # noqa: E731
                                            num_epochs=1, drop_remainder=False, **common)
    return train_it, eval_fn, train_it.batches_per_epoch()


def build_setup(cfg: Any, run_dir: Path) -> Setup:
    """Model, tokenizer, data and objective from the config (see configs/common.py)."""
    train_path, eval_path = data_paths(cfg, run_dir)
    mcfg, module, params, tok = build_model(cfg, run_dir, train_path)
    policy = _init_policy_params(cfg)
    algorithm = build_algorithm(cfg, module, mcfg, params, policy)
    train_it, eval_fn, per_epoch = build_data(cfg, tok, train_path, eval_path)
    gen_fn = None
    if cfg.eval.generate and eval_path:
        gen_fn = make_eval_generate_fn(cfg, run_dir, algorithm, module, tok, eval_path)
    return Setup(algorithm=algorithm, train_data=train_it, eval_data=eval_fn,
                 rules=mcfg.partition_rules(), model_config=mcfg, tokenizer=tok,
                 initial_lm_params=policy if policy is not None else params,
                 steps_per_epoch=per_epoch, eval_generate_fn=gen_fn)


def make_eval_generate_fn(cfg: Any, run_dir: Path, algorithm: Algorithm, module, tok,
                          eval_path: str):
    """`eval.generate`: at each evaluation, rewrite the first `eval.num_prompts` eval postings
    (ILQL: perturbed with `ilql.generation.adv_weight`) and report the mean diversity reward of
    the rewrites (`gen_reward`, pool = `reward.pool` or the demo candidates), their length and
    the fraction that ended with `</a>`. Single-process runs only (skipped otherwise)."""
    from fairjax.data.jobs import JobsDataset
    from fairjax.generate import GenerationConfig, Policy, generate_texts
    from fairjax.rewards.diversity import DiversityScorer
    from fairjax.rewards.pool import load_pool

    prompts = [e.prompt for e in JobsDataset.from_file(eval_path, text_field=cfg.data.text_field,
                                                       on_error="skip")][: cfg.eval.num_prompts]
    pool_path = cfg.reward.pool or str(run_dir / "data" / "candidates.jsonl")
    if not os.path.isfile(pool_path):
        raise ConfigError(f"config.eval.generate needs a candidate pool: config.reward.pool="
                          f"{cfg.reward.pool!r} (no demo candidates at {pool_path})")
    scorer = DiversityScorer(load_pool(pool_path))
    ilql_cfg = ilql_config(cfg) if cfg.algorithm == "ilql" else None
    g = cfg.ilql.generation if ilql_cfg is not None else None
    gen_cfg = GenerationConfig(max_new_tokens=cfg.eval.max_new_tokens,
                               temperature=g.temperature if g else 1.0, top_k=g.top_k if g else 0,
                               adv_weight=g.adv_weight if g else 0.0)

    def fn(params, frozen, step):
        if jax.process_count() > 1:
            return {}
        if ilql_cfg is not None and cfg.lora.enabled:
            from fairjax.agents.lora import effective_ilql
            from fairjax.models.lora import LoraConfig

            policy = Policy.ilql(module, ilql_cfg, *effective_ilql(
                ilql_cfg, params, frozen, LoraConfig(cfg.lora.rank, cfg.lora.alpha)))
        elif ilql_cfg is not None:
            policy = Policy.ilql(module, ilql_cfg, params, frozen)
        else:
            policy = Policy.lm(*algorithm.policy(params, frozen))
        rows = generate_texts(policy, tok, prompts, gen_cfg, rng=jax.random.PRNGKey(int(step)),
                              batch_size=max(1, min(16, len(prompts))))
        texts = [r["text"] for r in rows]
        return {"gen_reward": float(np.mean(scorer.score_texts(texts))),
                "gen_new_tokens": float(np.mean([r["num_new_tokens"] for r in rows])),
                "gen_finished": float(np.mean([r["finished"] for r in rows]))}

    return fn


# =========================================================================== run-dir policy
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
    import orbax.checkpoint as ocp

    from fairjax.io.checkpoint import load_model_dir
    from fairjax.models import build_model as module_for

    run_dir = Path(run_dir).absolute()
    cfg = rd.load_config(run_dir)
    mcfg, base, tok = load_model_dir(run_dir / rd.MODEL_DIR)
    module = module_for(mcfg)
    algorithm = build_algorithm(cfg, module, mcfg, base)
    one = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    params, frozen = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=one),
        jax.eval_shape(algorithm.init, jax.random.PRNGKey(0)))
    manager = rd.checkpoint_manager(run_dir, read_only=True, async_save=False)
    try:
        s = rd.resolve_step(manager, step, run_dir)
        trees = {k: t for k, t in (("params", params), ("frozen", frozen)) if jax.tree.leaves(t)}
        r = manager.restore(s, args=ocp.args.Composite(
            **{k: ocp.args.StandardRestore(t) for k, t in trees.items()}))
    finally:
        manager.close()
    return RestoredRun(cfg, mcfg, module, algorithm, r["params"],
                       r["frozen"] if "frozen" in trees else frozen, tok, int(s))


def restore_policy(run_dir: str | os.PathLike, step: Any = None) -> tuple[Any, PyTree]:
    """(model_config, policy LM params as numpy) of a run dir's checkpoint (see `restore_run`)."""
    run = restore_run(run_dir, step)
    _, lm_params = run.algorithm.policy(run.params, run.frozen)
    return run.model_config, jax.tree.map(np.asarray, jax.device_get(lm_params))


def load_policy_params(run_dir: str | os.PathLike, step: Optional[int] = None) -> PyTree:
    """Hook used by `fairjax.io.checkpoint.load_run_dir`: policy params (best when step=None),
    or None when the run has no checkpoint yet."""
    run_dir = Path(run_dir)
    if not (run_dir / rd.CHECKPOINT_DIR).is_dir() or not any(
            p.name.isdigit() for p in (run_dir / rd.CHECKPOINT_DIR).iterdir()):
        return None
    return restore_policy(run_dir, step)[1]
