"""Helpers for the trainer/parallel/resume/multihost tests (not a test module).

* `toy_setup(cfg)`: a linear-regression `Algorithm` with a Polyak "target" in `frozen`, fed by
  `ArrayBatches` (deterministic shuffle by (seed, epoch), resumable) - no model code involved.
* `small_config(algorithm, **overrides)`: a configs/<algorithm>.py config shrunk for tests.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fairjax.agents.base import Algorithm
from fairjax.train.loop import Setup

REPO = Path(__file__).resolve().parents[1]


def assert_trees_equal(a, b, rtol: float = 0.0, atol: float = 0.0) -> None:
    """Same tree structure (keys, nesting) and every leaf equal (within rtol/atol): unlike a
    `zip()` over the leaves, a tree with a leaf missing fails."""
    sa, sb = jax.tree.structure(a), jax.tree.structure(b)
    assert sa == sb, f"tree structures differ: {sa} vs {sb}"
    jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y),
                                                         rtol=rtol, atol=atol), a, b)


def load_config(name: str):
    spec = importlib.util.spec_from_file_location(f"cfg_{name}", REPO / "configs" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config()


def small_config(name: str = "bc", **overrides):
    """Config for tests: few steps, no progress bar / TensorBoard, synchronous checkpoints."""
    cfg = load_config(name)
    base = {"train.steps": 6, "train.log_every": 2, "train.eval_every": 3, "train.save_every": 3,
            "train.eval_batches": 2, "train.progress": False, "train.tensorboard": False,
            "train.async_checkpoint": False, "optim.warmup_steps": 2, "optim.batch_size": 8,
            "optim.lr": 1e-2,
            # short episodes keep tests fast (the shipped default, 512, keeps demo postings whole)
            "data.max_len": 128, "data.buckets": (64, 128),
            # the hashing TF-IDF embedder: the shipped default (MiniLM) would load a 90 MB model
            # into every test that builds a reward
            "reward.embedder": "tfidf"}
    base.update(overrides)
    return set_dotted(cfg, base)


def set_dotted(cfg, overrides: dict):
    """Set `{"a.b.c": value}` overrides on a ConfigDict (like `--config.a.b.c=value`)."""
    for key, value in overrides.items():
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return cfg


class ArrayBatches:
    """Global batches of `batch_rows` rows from in-memory arrays; this process's contiguous
    slice of every global batch; order = permutation by (seed, epoch); resumable."""

    def __init__(self, arrays: dict, batch_rows: int, seed: int = 0,
                 process_index: int = 0, process_count: int = 1):
        self.arrays = {k: np.asarray(v) for k, v in arrays.items()}
        self.n = len(next(iter(self.arrays.values())))
        self.rows, self.seed = batch_rows, seed
        self.pi, self.pc = process_index, process_count
        self.epoch, self.index = 0, 0

    def state(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def restore(self, s: dict) -> None:
        self.epoch, self.index = int(s["epoch"]), int(s["index"])

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        if self.index + self.rows > self.n:
            self.epoch, self.index = self.epoch + 1, 0
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
        idx = order[self.index:self.index + self.rows]
        self.index += self.rows
        per = self.rows // self.pc
        idx = idx[self.pi * per:(self.pi + 1) * per]
        return {k: v[idx] for k, v in self.arrays.items()}


def toy_algorithm(dim: int = 16, alpha: float = 0.1, nan_at_step: int | None = None,
                  noise: float = 1e-3) -> Algorithm:
    """MSE linear regression; frozen = Polyak copy of params. `nan_at_step`: the loss becomes
    NaN when frozen['count'] reaches it (tests the non-finite guard)."""

    noise_scale = noise

    def init(rng):
        k1, _ = jax.random.split(rng)
        params = {"dense": {"kernel": jax.random.normal(k1, (dim, 1)) * 0.1,
                            "bias": jnp.zeros((1,))}}
        return params, {"target": jax.tree.map(jnp.copy, params), "count": jnp.zeros((), jnp.int32)}

    def loss(params, frozen, batch, rng):
        pred = batch["x"] @ params["dense"]["kernel"] + params["dense"]["bias"]  # [B, 1]
        noise = noise_scale * jax.random.normal(rng, pred.shape)  # exercises the step rng
        err = jnp.mean((pred[:, 0] + noise[:, 0] - batch["y"]) ** 2)
        if nan_at_step is not None:
            err = jnp.where(frozen["count"] >= nan_at_step - 1, jnp.nan, err)
        return err, {"mse": err}

    def update_frozen(params, frozen, step):
        return {"target": optax.incremental_update(params, frozen["target"], alpha),
                "count": frozen["count"] + 1}

    return Algorithm(name="toy", init=init, loss=loss, update_frozen=update_frozen,
                     policy=lambda p, f: (None, p))


def toy_data(n: int = 64, dim: int = 16, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim)).astype(np.float32)
    w = rng.normal(size=(dim,)).astype(np.float32)
    return {"x": x, "y": (x @ w + 0.1).astype(np.float32)}


def toy_setup(cfg, nan_at_step=None, process_index=0, process_count=1, noise=1e-3) -> Setup:
    data = toy_data()
    rows = cfg.optim.batch_size * cfg.optim.grad_accum
    train = ArrayBatches(data, rows, seed=cfg.seed, process_index=process_index,
                         process_count=process_count)
    ev = toy_data(n=32, seed=1)
    eval_data = lambda: ArrayBatches(ev, cfg.optim.batch_size, seed=99,  # noqa: E731
                                     process_index=process_index, process_count=process_count)
    return Setup(algorithm=toy_algorithm(nan_at_step=nan_at_step, noise=noise), train_data=train,
                 eval_data=eval_data)


def gpt2_parts(fixtures_dir, algorithm: str, data_dir, **overrides):
    """(cfg, Setup-like pieces) for a real objective on the fixture tiny GPT-2 + demo postings:
    returns (cfg, algorithm, rules, train BatchIterator)."""
    from fairjax.agents.registry import build_algorithm
    from fairjax.data.demo import write_demo
    from fairjax.runs import load
    from fairjax.train.build import build_data, data_inputs

    module, params, tok = load(str(Path(fixtures_dir) / "gpt2_tiny" / "hf"))
    cfg = small_config(algorithm, **{"data.max_len": 64, "data.buckets": (32, 64), **overrides})
    paths = write_demo(data_dir, n_postings=40, n_candidates=4, seed=0)
    alg = build_algorithm(cfg, module, module.config, params)
    train_it, _, _ = build_data(cfg, *data_inputs(cfg), tok, paths["train"], None)
    return cfg, alg, module.config.partition_rules(), train_it


def run_steps(cfg, alg, rules, batches, mesh_shape, n_steps=3, devices=None, impl="gspmd"):
    """n optimizer steps on a mesh (data, fsdp, tensor) with `mesh.impl` = impl; returns
    (losses, params as numpy)."""
    from fairjax import parallel
    from fairjax.optim import make_optimizer
    from fairjax.train.loop import LoopConfig, StatePlan, compile_train_step, stack_micro

    mesh = parallel.make_mesh(parallel.MeshConfig(*mesh_shape), devices)
    opt = make_optimizer(LoopConfig.from_config(cfg).optim, 10)
    plan = StatePlan(alg, opt, mesh, rules, cfg.seed)
    step = compile_train_step(alg, opt, plan, impl=impl)
    state = plan.init()
    losses = []
    for b in batches[:n_steps]:
        state, m = step(state, parallel.shard_batch(stack_micro(b, cfg.optim.grad_accum), mesh))
        losses.append(float(m["loss"]))
    return np.asarray(losses), jax.tree.map(np.asarray, jax.device_get(state["params"]))


def max_rel_err(a, b) -> float:
    errs = [np.max(np.abs(x - y)) / max(np.max(np.abs(y)), 1e-12)
            for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))]
    return float(max(errs))


def jaxpr_eqns(jaxpr):
    """Every equation of a (closed) jaxpr, recursing into sub-jaxprs (jit, scan, remat, custom_vjp)."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    for e in jaxpr.eqns:
        yield e
        for v in e.params.values():
            for s in (v if isinstance(v, (list, tuple)) else [v]):
                if hasattr(s, "eqns") or hasattr(getattr(s, "jaxpr", None), "eqns"):
                    yield from jaxpr_eqns(s)
