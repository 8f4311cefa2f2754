"""Mesh/sharding unit tests + 8 fake CPU devices == 1 device (subprocess, BC and ILQL)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from jax.sharding import PartitionSpec as P
from ml_collections import ConfigDict

from fairjax import parallel
from fairjax.errors import ConfigError
from fairjax.typed_config import typed_block

HERE = Path(__file__).resolve().parent


class _FakeMesh:  # only .shape is used by fit_spec
    def __init__(self, **shape):
        self.shape = shape


def test_mesh_shape_resolves_minus_one_and_rejects_bad_sizes():
    cfg = parallel.MeshConfig(data=-1, fsdp=2, tensor=1)
    assert parallel.mesh_shape(cfg, 8) == (4, 2, 1)
    with pytest.raises(ConfigError, match="not divisible"):
        parallel.mesh_shape(cfg, 7)
    with pytest.raises(ConfigError, match="at most one"):
        parallel.MeshConfig(data=-1, fsdp=-1, tensor=1)
    with pytest.raises(ConfigError, match="sizes must be"):
        parallel.MeshConfig(data=0)
    with pytest.raises(ConfigError, match="needs 4 devices"):
        parallel.mesh_shape(parallel.MeshConfig(data=2, fsdp=2, tensor=1), 8)


def test_mesh_and_distributed_blocks_are_typed_once(monkeypatch):
    """config.mesh / config.distributed -> MeshConfig / DistributedConfig (typed_block): an unknown
    field names config.<block>.<field>, a bad value config.<block>; the mesh functions and
    initialize_distributed refuse the raw ConfigDict (the caller converts once)."""
    block = ConfigDict({"data": -1, "fsdp": 1, "tensor": 1, "impl": "gspmd"})
    mesh = typed_block(block, parallel.MeshConfig, "mesh")
    assert mesh == parallel.MeshConfig() and typed_block(mesh, parallel.MeshConfig, "mesh") is mesh
    with pytest.raises(ConfigError, match=r"config\.mesh\.fdsp: unknown field"):
        typed_block(ConfigDict({"data": -1, "fdsp": 2}), parallel.MeshConfig, "mesh")
    with pytest.raises(ConfigError, match=r"config\.mesh\.impl='pmap'.*shard_map"):
        typed_block(ConfigDict({"impl": "pmap"}), parallel.MeshConfig, "mesh")
    with pytest.raises(ConfigError, match=r"config\.mesh\.tensor=2 needs mesh\.impl='gspmd'"):
        parallel.MeshConfig(tensor=2, impl="shard_map")
    with pytest.raises(TypeError, match="MeshConfig"):
        parallel.make_mesh(block)
    with pytest.raises(TypeError, match="MeshConfig"):
        parallel.mesh_shape(block, 8)
    dist = ConfigDict({"coordinator": "", "num_processes": 0, "process_id": -1, "auto": False})
    assert typed_block(dist, parallel.DistributedConfig, "distributed").process_id == -1
    with pytest.raises(ConfigError, match=r"config\.distributed\.heartbeat_timeout_s=0"):
        typed_block(ConfigDict({"heartbeat_timeout_s": 0}), parallel.DistributedConfig,
                    "distributed")
    with pytest.raises(ConfigError, match=r"config\.distributed\.coordinater"):
        typed_block(ConfigDict({"coordinater": "h:1"}), parallel.DistributedConfig, "distributed")
    with pytest.raises(TypeError, match="DistributedConfig"):
        parallel.initialize_distributed(dist)
    for var in (parallel.ENV_COORDINATOR, parallel.ENV_NUM_PROCESSES, parallel.ENV_PROCESS_ID):
        monkeypatch.delenv(var, raising=False)
    assert parallel.initialize_distributed(parallel.DistributedConfig()) is False  # one process


def test_fit_spec_replicates_indivisible_dims_and_falls_back_to_fsdp():
    mesh = _FakeMesh(data=2, fsdp=4, tensor=1)
    assert parallel.fit_spec(P("fsdp", "tensor"), (64, 10), mesh) == P("fsdp", "tensor")
    assert parallel.fit_spec(P("fsdp", None), (10, 4096), mesh) == P(None, "fsdp")  # fallback
    assert parallel.fit_spec(P("fsdp", None), (10, 64), mesh) == P()  # small: replicated
    assert parallel.fit_spec(P(), (128, 256), mesh) == P(None, "fsdp")  # large replicated leaf
    assert parallel.fit_spec(P(), (8,), mesh) == P()  # small leaf stays replicated


def test_process_slice_partitions_rows():
    parts = [parallel.process_slice(8, i, 4) for i in range(4)]
    assert [(s.start, s.stop) for s in parts] == [(0, 2), (2, 4), (4, 6), (6, 8)]
    with pytest.raises(ConfigError):
        parallel.process_slice(6, 0, 4)


_SCRIPT = """
import json, sys, tempfile
sys.path.insert(0, {here!r})
import jax, numpy as np
import trainer_fixtures as tf
assert jax.device_count() == 8, jax.devices()
out = {{}}
for algo in ("bc", "ilql"):
    # lr 3e-4 (the config default): Adam turns the pure round-off gradient of params whose true
    # gradient is 0 (the attention key bias) into +-lr steps, so the tolerance scales with lr.
    cfg, alg, rules, it = tf.gpt2_parts({fixtures!r}, algo, tempfile.mkdtemp(), **{{"optim.lr": 3e-4}})
    batches = [next(it) for _ in range(3)]
    ref_l, ref_p = tf.run_steps(cfg, alg, rules, batches, (1, 1, 1), devices=jax.devices()[:1])
    for shape in ((8, 1, 1), (4, 2, 1)):
        l, p = tf.run_steps(cfg, alg, rules, batches, shape)
        out[f"{{algo}}-{{shape}}"] = {{"loss": float(np.max(np.abs(l - ref_l) / np.abs(ref_l))),
                                      "params": tf.max_rel_err(p, ref_p),
                                      "losses": l.tolist(), "ref": ref_l.tolist()}}
print("RESULT" + json.dumps(out))
"""


def _run_on_eight_devices(script: str, fixtures_dir, timeout: int) -> dict:
    """Run `script` (formatted with here/fixtures) on 8 fake CPU devices; its RESULT json."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu")
    code = script.format(here=str(HERE), fixtures=str(fixtures_dir))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=HERE.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT")][-1]
    return json.loads(line[len("RESULT"):])


@pytest.mark.slow
def test_eight_devices_match_one_device(fixtures_dir):
    res = _run_on_eight_devices(_SCRIPT, fixtures_dir, 300)
    assert set(res) == {"bc-(8, 1, 1)", "bc-(4, 2, 1)", "ilql-(8, 1, 1)", "ilql-(4, 2, 1)"}
    for name, r in res.items():
        assert r["losses"][0] != r["losses"][-1], f"{name}: training did not change the loss"
        assert r["loss"] < 1e-5, (name, r)
        assert r["params"] < 1e-5, (name, r)


_SHARD_MAP_SCRIPT = """
import json, sys, tempfile
sys.path.insert(0, {here!r})
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import PartitionSpec as P
import trainer_fixtures as tf
from fairjax import parallel
from fairjax.losses.common import masked_mean, sharded_batch
from fairjax.train.loop import LoopConfig, StatePlan
from fairjax.optim import make_optimizer
assert jax.device_count() == 8, jax.devices()
out = {{}}
# the losses' batch reductions: a masked mean with unequal counts per shard is the global one
x = np.arange(32, dtype=np.float32).reshape(8, 4)
m = (np.arange(32).reshape(8, 4) % (np.arange(8)[:, None] + 1) == 0).astype(np.float32)
mesh = parallel.make_mesh(parallel.MeshConfig(data=8, fsdp=1, tensor=1))
def per_device(x, m, global_):
    if global_:
        with sharded_batch(("data", "fsdp")):
            return masked_mean(x, m)[None]
    return masked_mean(x, m)[None]
for global_ in (True, False):
    f = jax.shard_map(lambda a, b: per_device(a, b, global_), mesh=mesh,
                      in_specs=(P(("data", "fsdp")),) * 2, out_specs=P(("data", "fsdp")),
                      check_vma=False)
    out[f"masked_mean_global={{global_}}"] = np.asarray(f(x, m)).tolist()
out["masked_mean_ref"] = float((x * m).sum() / m.sum())
for algo in ("bc", "ilql", "alol"):
    # A-LoL with the mean-reward baseline: advantages come with the batch (no value-head fit)
    extra = {{"alol.baseline": "mean"}} if algo == "alol" else {{}}
    cfg, alg, rules, it = tf.gpt2_parts({fixtures!r}, algo, tempfile.mkdtemp(),
                                        **{{"optim.lr": 3e-4, **extra}})
    batches = [next(it) for _ in range(2)]
    ref_l, ref_p = tf.run_steps(cfg, alg, rules, batches, (1, 1, 1), n_steps=2,
                                devices=jax.devices()[:1])
    # data=4 x fsdp=2 exercises every collective; pure data=8 once (BC) to keep the test short
    for shape in (((8, 1, 1), (4, 2, 1)) if algo == "bc" else ((4, 2, 1),)):
        l, p = tf.run_steps(cfg, alg, rules, batches, shape, n_steps=2, impl="shard_map")
        mesh = parallel.make_mesh(parallel.MeshConfig(*shape))
        plan = StatePlan(alg, make_optimizer(LoopConfig.from_config(cfg).optim, 10), mesh, rules,
                         cfg.seed)
        fsdp = sum("fsdp" in str(s.spec) for s in jax.tree.leaves(plan.shardings["params"]))
        out[f"{{algo}}-{{shape}}"] = {{"loss": float(np.max(np.abs(l - ref_l) / np.abs(ref_l))),
                                      "params": tf.max_rel_err(p, ref_p), "fsdp_leaves": fsdp,
                                      "losses": l.tolist(), "ref": ref_l.tolist()}}
print("RESULT" + json.dumps(out))
"""


@pytest.mark.slow
def test_shard_map_step_matches_one_device(fixtures_dir):
    """mesh.impl=shard_map (per-device loss/grad, psum / all_gather / psum_scatter) on 8 fake
    devices, data=8 and data=4 x fsdp=2, equals 1 device for BC, ILQL and A-LoL."""
    res = _run_on_eight_devices(_SHARD_MAP_SCRIPT, fixtures_dir, 600)
    ref = res.pop("masked_mean_ref")
    assert np.allclose(res.pop("masked_mean_global=True"), ref, rtol=1e-6)
    local = res.pop("masked_mean_global=False")  # per-shard means: what a naive pmean would mix
    assert not np.allclose(np.mean(local), ref, rtol=1e-3)
    assert set(res) == {"bc-(8, 1, 1)", "bc-(4, 2, 1)", "ilql-(4, 2, 1)", "alol-(4, 2, 1)"}
    for name, r in res.items():
        assert r["losses"][0] != r["losses"][-1], f"{name}: training did not change the loss"
        assert r["loss"] < 1e-5, (name, r)
        assert r["params"] < 1e-5, (name, r)
        if "(4, 2, 1)" in name:
            assert r["fsdp_leaves"] > 0, f"{name}: no param is sharded over fsdp"
