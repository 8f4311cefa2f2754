"""Trainer loop on a toy objective: metrics, checkpoints (latest K + best), exact resume,
grad accumulation, frozen updates, non-finite loss."""
import json
import re
import shutil

import jax
import numpy as np
import pytest

from fairjax.errors import ConfigError
from fairjax.io import run_dir as rd
from fairjax.train import loop
from fairjax.train.build import train

from trainer_fixtures import (assert_trees_equal, small_config, toy_algorithm, toy_data,
                              toy_setup)


def _params(result):
    return jax.tree.map(np.asarray, jax.device_get(result.state["params"]))


def test_train_logs_checkpoints_and_learns(tmp_path):
    cfg = small_config("bc", **{"train.steps": 12, "train.keep": 1, "optim.lr": 0.3})
    res = train(cfg, tmp_path, setup=toy_setup(cfg))
    assert res.step == 12
    lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train_losses = [l["loss"] for l in lines if l["split"] == "train"]
    assert [l["step"] for l in lines if l["split"] == "train"] == [2, 4, 6, 8, 10, 12]
    assert train_losses[-1] < train_losses[0]
    evals = {l["step"]: l["loss"] for l in lines if l["split"] == "eval"}
    assert sorted(evals) == [3, 6, 9, 12]
    # keep=1 latest + the best by eval loss
    steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    best = min(evals, key=evals.get)
    assert steps == sorted({12, best}) and res.best_step == best
    assert (tmp_path / "config.json").is_file() and (tmp_path / "config.py").is_file()
    # frozen Polyak target was updated once per optimizer step
    assert int(jax.device_get(res.state["frozen"]["count"])) == 12
    # relaunching the finished run trains nothing and keeps the summary's final metrics
    summary = json.loads((tmp_path / rd.SUMMARY_FILE).read_text())
    again = train(cfg, tmp_path, setup=toy_setup(cfg))
    assert again.step == 12 and again.eval_metrics == res.eval_metrics
    assert json.loads((tmp_path / rd.SUMMARY_FILE).read_text())["eval_metrics"] == \
        summary["eval_metrics"] != {}


def test_resume_from_checkpoint_is_exact(tmp_path):
    cfg = small_config("bc", **{"train.steps": 9, "train.keep": 10})
    full = train(cfg, tmp_path / "a", setup=toy_setup(cfg))
    # a run that "died" after step 3: keep only that checkpoint and its metrics
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    for p in (tmp_path / "b" / "checkpoints").iterdir():
        if p.name.isdigit() and int(p.name) > 3:
            shutil.rmtree(p)
    resumed = train(cfg, tmp_path / "b", setup=toy_setup(cfg))
    assert resumed.step == 9
    assert_trees_equal(_params(full), _params(resumed))
    np.testing.assert_array_equal(np.asarray(jax.device_get(full.state["rng"])),
                                  np.asarray(jax.device_get(resumed.state["rng"])))


def test_resume_false_refuses_to_overwrite(tmp_path):
    cfg = small_config("bc", **{"train.steps": 3})
    train(cfg, tmp_path, setup=toy_setup(cfg))
    cfg.train.resume = False
    with pytest.raises(ConfigError, match="resume=False"):
        train(cfg, tmp_path, setup=toy_setup(cfg))


def test_grad_accumulation_equals_large_batch(tmp_path):
    big = small_config("bc", **{"optim.batch_size": 8, "optim.grad_accum": 1})
    acc = small_config("bc", **{"optim.batch_size": 4, "optim.grad_accum": 2})
    a = train(big, tmp_path / "a", setup=toy_setup(big, noise=0.0))
    b = train(acc, tmp_path / "b", setup=toy_setup(acc, noise=0.0))
    assert_trees_equal(_params(a), _params(b), rtol=1e-5, atol=1e-6)


def test_nan_loss_stops_naming_the_step_and_keeps_last_good_checkpoint(tmp_path):
    cfg = small_config("bc", **{"train.steps": 12})
    with pytest.raises(loop.NonFiniteLossError, match="step 5") as err:
        train(cfg, tmp_path, setup=toy_setup(cfg, nan_at_step=5))
    assert err.value.step == 5
    steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [3]
    manager = rd.checkpoint_manager(tmp_path, read_only=True)
    plan_cfg = toy_setup(cfg)
    from fairjax import parallel
    from fairjax.optim import make_optimizer
    typed = loop.LoopConfig.from_config(cfg)
    plan = loop.StatePlan(plan_cfg.algorithm, make_optimizer(typed.optim, 12),
                          parallel.make_mesh(typed.mesh), plan_cfg.rules, cfg.seed)
    state, data_state = loop.restore_state(manager, 3, plan)
    manager.close()
    assert int(state["step"]) == 3 and data_state["index"] > 0
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state["params"]))


def test_save_without_eval_metric_logs_no_orbax_warning(tmp_path):
    """A save before the first eval (online runs, eval_every=0) carries no eval_loss; Orbax's
    "Requested `tracked_metric`" warning about it is fairjax's choice, not the user's: dropped."""
    import logging

    import jax.numpy as jnp

    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    handler = Keep()
    absl_logger = logging.getLogger("absl")
    absl_logger.addHandler(handler)
    try:
        manager = rd.checkpoint_manager(tmp_path, async_save=False)
        state = {"params": {"w": jnp.ones(3)}, "opt_state": {}, "frozen": {},
                 "step": jnp.array(1), "rng": jax.random.PRNGKey(0)}
        manager.save(1, args=rd.state_items(state, {}), force=True)
        manager.wait_until_finished()
        manager.close()
    finally:
        absl_logger.removeHandler(handler)
    assert (tmp_path / rd.CHECKPOINT_DIR / "1").is_dir()
    assert not [r for r in records if "tracked_metric" in r.getMessage()]


def test_tree_equality_fails_on_a_truncated_or_renamed_tree():
    """The helper the resume/relaunch tests compare params with: a zip() over leaves would pass."""
    a = {"w": np.ones(3), "b": np.zeros(2)}
    assert_trees_equal(a, {"w": np.ones(3), "b": np.zeros(2)})
    for other in ({"w": np.ones(3)}, {"w": np.ones(3), "c": np.zeros(2)},
                  {"w": np.ones(3), "b": np.ones(2)}):
        with pytest.raises(AssertionError):
            assert_trees_equal(a, other)


def _shifting_producer(seen: list, updates: int):
    """A toy batch producer (what online RL's rollouts are to the loop): the targets of the
    step's batch depend on the params the step starts from, and the batch holds `updates`
    update blocks (the data rows, then the same rows reversed)."""
    from fairjax.agents.base import Producer

    def produce(state, batch):
        w = np.asarray(jax.device_get(state["params"]["dense"]["kernel"]))  # [dim, 1]
        seen.append((int(jax.device_get(state["step"])), w.copy()))
        y = batch["y"] - 0.5 * (batch["x"] @ w)[:, 0]  # a target made with the current params
        blocks = [{"x": batch["x"], "y": y}, {"x": batch["x"][::-1], "y": y[::-1]}][:updates]
        return {k: np.concatenate([b[k] for b in blocks]) for k in ("x", "y")}, {"w": w}

    def summarize(metrics, info, seconds):
        assert np.shape(metrics["loss"]) == ((updates,) if updates > 1 else ())
        return {"loss": float(np.mean(metrics["loss"])), "finite": float(metrics["finite"]),
                "time/update": seconds}

    return Producer(produce=produce, updates=updates, summarize=summarize)


def test_producer_batches_are_made_from_the_current_state(tmp_path):
    """Setup.producer: each step's batch is produced from the state that step starts from, its
    `updates` blocks are that many optimizer updates of the ordinary compiled step (equal to
    applying them one compiled step at a time, the schedule counting updates), and a resumed
    run produces and trains exactly as the uninterrupted one."""
    from fairjax import parallel
    from fairjax.optim import make_optimizer

    from trainer_fixtures import ArrayBatches, toy_algorithm, toy_data

    cfg = small_config("bc", **{"train.steps": 4, "train.eval_every": 0, "train.save_every": 1,
                                "train.keep": 10, "train.log_every": 1, "optim.lr": 0.05})
    seen: list = []

    def setup():
        s = toy_setup(cfg, noise=0.0)
        s.eval_data = None
        s.producer = _shifting_producer(seen, 2)
        return s

    full = train(cfg, tmp_path / "full", setup=setup())
    assert [s for s, _ in seen] == [0, 1, 2, 3]
    assert not np.allclose(seen[1][1], seen[0][1])  # the second step saw the updated params
    rows = [json.loads(line) for line in (tmp_path / "full" / rd.METRICS_FILE).read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and all(r["time/update"] > 0 for r in rows)

    # the same, one update per compiled step, by hand
    alg = toy_algorithm(noise=0.0)
    typed = loop.LoopConfig.from_config(cfg)
    mesh = parallel.make_mesh(typed.mesh)
    opt = make_optimizer(typed.optim, 4 * 2)  # the schedule runs over the 8 optimizer updates
    plan = loop.StatePlan(alg, opt, mesh, ((".*", jax.sharding.PartitionSpec()),), cfg.seed)
    state, data = plan.init(), ArrayBatches(toy_data(), cfg.optim.batch_size, seed=cfg.seed)
    one = jax.jit(loop.make_train_step(alg, opt))
    produce = _shifting_producer([], 2).produce
    for _ in range(4):
        batch, _ = produce(state, next(data))
        for u in range(2):
            block = {k: v[u * 8:(u + 1) * 8] for k, v in batch.items()}
            state, _ = one(state, parallel.shard_batch(loop.stack_micro(block, 1), mesh))
    assert_trees_equal(_params(full), jax.tree.map(np.asarray, jax.device_get(state["params"])),
                       rtol=1e-6, atol=1e-7)

    # a run that died after step 2, resumed: the producer sees the restored state and data
    shutil.copytree(tmp_path / "full", tmp_path / "cut")
    for p in (tmp_path / "cut" / "checkpoints").iterdir():
        if p.name.isdigit() and int(p.name) > 2:
            shutil.rmtree(p)
    seen.clear()
    resumed = train(cfg, tmp_path / "cut", setup=setup())
    assert [s for s, _ in seen] == [2, 3]
    assert_trees_equal(_params(full), _params(resumed))


def test_loop_blocks_are_converted_once_into_typed_configs():
    """`LoopConfig.from_config` is the one conversion of the loop's blocks (train, optim, mesh,
    distributed + seed / algorithm / run_dir); validate_config returns it. An unknown field
    names config.<block>.<field>, a bad value config.<block>; the loop refuses the raw config."""
    from fairjax.optim import OptimConfig
    from fairjax.parallel import DistributedConfig, MeshConfig
    from fairjax.train.build import validate_config

    cfg = small_config("bc", **{"train.steps": 5, "optim.lr": 0.02, "mesh.fsdp": 1, "seed": 3})
    typed = validate_config(cfg)
    assert typed == loop.LoopConfig.from_config(cfg)
    assert isinstance(typed.train, loop.TrainConfig) and isinstance(typed.optim, OptimConfig)
    assert isinstance(typed.mesh, MeshConfig) and isinstance(typed.distributed, DistributedConfig)
    assert (typed.train.steps, typed.optim.lr, typed.seed, typed.name, typed.run_dir) == \
        (5, 0.02, 3, "bc", cfg.run_dir)
    assert loop.total_steps(typed.train, None) == 5
    assert loop.total_steps(loop.TrainConfig(steps=0, epochs=2), 7) == 14
    cfg.train.unlock()
    cfg.train.eval_evry = 3
    with pytest.raises(ConfigError, match=r"config\.train\.eval_evry: unknown field"):
        loop.LoopConfig.from_config(cfg)
    cfg = small_config("bc", **{"train.steps": 0, "train.epochs": 0})
    with pytest.raises(ConfigError, match=r"config\.train\.steps and config\.train\.epochs"):
        validate_config(cfg)
    with pytest.raises(ConfigError, match=r"config\.train\.log_every=0; expected > 0"):
        loop.TrainConfig(log_every=0)
    with pytest.raises(TypeError, match="LoopConfig"):
        loop.run(small_config("bc"), "unused", setup=lambda: None)


def test_loop_runs_on_the_typed_config_alone(tmp_path):
    """`loop.run` needs no run config: a LoopConfig built by hand trains the toy setup; writing
    the resolved config into the run dir is `build.train`'s job."""
    from fairjax.optim import OptimConfig

    cfg = small_config("bc")
    typed = loop.LoopConfig(
        train=loop.TrainConfig(steps=4, log_every=2, eval_every=2, save_every=2, eval_batches=1,
                               progress=False, tensorboard=False, async_checkpoint=False),
        optim=OptimConfig(lr=1e-2, warmup_steps=1, batch_size=cfg.optim.batch_size),
        seed=cfg.seed, name="toy")
    res = loop.run(typed, tmp_path, toy_setup(cfg))
    assert res.step == 4 and res.best_step in (2, 4)
    assert not (tmp_path / "config.json").exists()
    steps = [json.loads(line)["step"] for line in (tmp_path / rd.METRICS_FILE).read_text().splitlines()
             if json.loads(line)["split"] == "train"]
    assert steps == [2, 4]
    # the same settings through build.train (which also records the config) train identically
    cfg = small_config("bc", **{"train.steps": 4, "train.eval_every": 2, "train.save_every": 2,
                                "train.eval_batches": 1, "optim.warmup_steps": 1})
    again = train(cfg, tmp_path / "built", setup=toy_setup(cfg))
    assert (tmp_path / "built" / "config.json").is_file()
    assert_trees_equal(_params(res), _params(again))


def _toy_step(nan_at_step=None, check_finite=True, dim=16):
    """(compiled step, plan, one batch [1, B, ...]) of the toy objective on a 1-device mesh."""
    from fairjax import parallel
    from fairjax.optim import make_optimizer

    cfg = small_config("bc")
    alg = toy_algorithm(dim=dim, nan_at_step=nan_at_step)
    typed = loop.LoopConfig.from_config(cfg)
    opt = make_optimizer(typed.optim, 10)
    plan = loop.StatePlan(alg, opt, parallel.make_mesh(typed.mesh), toy_setup(cfg).rules,
                          cfg.seed)
    step = loop.compile_train_step(alg, opt, plan, check_finite=check_finite)
    data = {k: v[:cfg.optim.batch_size] for k, v in toy_data(dim=dim).items()}
    batch = parallel.shard_batch(loop.stack_micro(data, 1), plan.mesh)
    return step, plan, batch


def test_non_finite_step_returns_the_old_state_bit_for_bit():
    step, plan, batch = _toy_step(nan_at_step=1)
    state = plan.init()
    before = jax.tree.map(np.asarray, jax.device_get(
        {k: state[k] for k in ("params", "opt_state", "frozen")}))
    new, metrics = step(state, batch)
    assert not bool(metrics["finite"]) and int(new["step"]) == 1
    after = jax.tree.map(np.asarray, jax.device_get(
        {k: new[k] for k in ("params", "opt_state", "frozen")}))
    jax.tree.map(np.testing.assert_array_equal, after, before)


def test_finite_step_equals_the_unguarded_update():
    """The guard (`check_finite`) changes nothing when the loss is finite."""
    outs = []
    for check in (True, False):
        step, plan, batch = _toy_step(check_finite=check)
        state = plan.init()
        for _ in range(3):
            state, metrics = step(state, batch)
        assert bool(metrics["finite"])
        outs.append(jax.tree.map(np.asarray, jax.device_get(
            {k: state[k] for k in ("params", "opt_state", "frozen")})))
    assert_trees_equal(outs[0], outs[1], rtol=1e-6, atol=1e-7)


def entry_parameter_copies(hlo: str) -> list[str]:
    """`copy` instructions of the optimised HLO's ENTRY computation whose operand is one of its
    parameters (a donated state buffer copied instead of updated in place)."""
    entry = hlo[hlo.index("\nENTRY "):]
    entry = entry[:entry.index("\n}")]
    params = set(re.findall(r"%([\w.\-]+) = [^\n]*? parameter\(\d+\)", entry))
    return [line.strip()[:120] for line in entry.splitlines()
            if (m := re.search(r" copy\(%([\w.\-]+)\)", line)) and m.group(1) in params]


def test_entry_copy_finder():
    hlo = ("HloModule m\n\nENTRY %main (a: f32[4]) -> f32[4] {\n  %a.1 = f32[4]{0} parameter(0)\n"
           "  %copy.2 = f32[4]{0} copy(%a.1)\n  %n = f32[4]{0} negate(%copy.2)\n"
           "  ROOT %copy.3 = f32[4]{0} copy(%n)\n}\n")
    assert entry_parameter_copies(hlo) == ["%copy.2 = f32[4]{0} copy(%a.1)"]


def test_guarded_step_updates_the_donated_state_in_place():
    """With the non-finite guard on, the optimiser moments and params are updated in their
    donated buffers: the compiled step copies no state buffer (a `where(finite, new, old)` guard
    made XLA copy every Adam moment each step)."""
    step, plan, batch = _toy_step(dim=256)
    hlo = step.lower(plan.init(), batch).compile().as_text()
    copies = [c for c in entry_parameter_copies(hlo) if "[256" in c or "[1,256" in c]
    assert not copies, copies
