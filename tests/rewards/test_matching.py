"""Diversity candidate matching sharded with shard_map (pool split across devices, local top-k,
merge) == the single-device numpy matching (`fairness.top_k_indices`), on 8 fake CPU devices."""
import json
import os
import subprocess
import sys
from pathlib import Path


HERE = Path(__file__).resolve().parent

_SCRIPT = """
import json, sys
import jax, numpy as np
from fairjax.data.demo import write_demo
from fairjax.eval import fairness
from fairjax.rewards import DiversityConfig, DiversityScorer
from fairjax.rewards.matching import sharded_top_k
from fairjax.rewards.pool import load_pool
assert jax.device_count() == 8
out = {}
rng = np.random.default_rng(0)
q = rng.normal(size=(37, 16)).astype(np.float32)
p = rng.normal(size=(1003, 16)).astype(np.float32)  # 1003: not divisible by 8 (padding)
p[500] = p[3]; p[900] = p[3]  # exact duplicates on other devices: ties go to the lower index
eligible = rng.random((37, 1003)) > 0.3
eligible[0] = False; eligible[0, [5, 700]] = True  # fewer eligible candidates than k
sim = q @ p.T
sim[~eligible] = -np.inf
ref = fairness.top_k_indices(sim, 50)
ref_valid = np.isfinite(np.take_along_axis(sim, ref, axis=1))
for name, devs in (("one", jax.devices()[:1]), ("eight", jax.devices())):
    idx, valid = sharded_top_k(q, p, 50, eligible, devs)
    out[name] = {"same_valid": bool((valid == ref_valid).all()),
                 "same_idx": bool((np.where(ref_valid, idx, -1) == np.where(ref_valid, ref, -1)).all())}
    rows = [list(r) for r in idx if {3, 500, 900} <= set(r)]
    out[name]["ties"] = len(rows) > 0 and all(r.index(3) < r.index(500) < r.index(900) for r in rows)
paths = write_demo(sys.argv[1], n_postings=12, n_candidates=300, seed=0)
pool = load_pool(paths["candidates"])
texts = [json.loads(l)["text"] for l in open(paths["eval"])]
a = DiversityScorer(pool).evaluate(texts, keep_top=True)
b = DiversityScorer(pool, config=DiversityConfig(matching="shard_map")).evaluate(texts, keep_top=True)
out["scorer"] = {"reward": bool(np.array_equal(a.reward, b.reward)),
                 "top": bool(np.array_equal(a.top_idx, b.top_idx)), "n": len(texts)}
print("RESULT" + json.dumps(out))
"""


def test_sharded_candidate_matching_equals_single_device(tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=300, cwd=HERE.parents[1])
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads([l for l in proc.stdout.splitlines() if l.startswith("RESULT")][-1][6:])
    for name in ("one", "eight"):
        assert res[name]["same_valid"] and res[name]["same_idx"], (name, res[name])
        assert res[name]["ties"], (name, res[name])  # equal similarities: lower index first
    assert res["scorer"]["reward"] and res["scorer"]["top"] and res["scorer"]["n"] > 0, res


def test_matching_option_is_validated():
    import pytest

    from fairjax.rewards import DiversityConfig

    with pytest.raises(ValueError, match="matching"):
        DiversityConfig(matching="gpu")
    assert DiversityConfig(matching="shard_map").matching == "shard_map"
