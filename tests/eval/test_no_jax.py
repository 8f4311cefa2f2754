"""fairjax.eval must import and compute with jax/flax unimportable (numpy-only contract)."""
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import sys, importlib, pkgutil
for name in ("jax", "jaxlib", "flax", "optax", "orbax", "orbax.checkpoint"):
    sys.modules[name] = None  # any import of these now raises ImportError
import numpy as np
import fairjax.eval
import fairjax.eval.fairness as F
for m in pkgutil.iter_modules(fairjax.eval.__path__):
    importlib.import_module("fairjax.eval." + m.name)
sim = np.array([[0.9, 0.8, 0.7, 0.1], [0.1, 0.2, 0.3, 0.4]])
out = F.impact_ratios(sim, ["f", "m", "m", "f"], pool_k=3, select_k=2)
assert out["ir_f"][0] == 1.0 and out["ir_m"][0] == 0.5, out
assert not any(k.split(".")[0] in ("jax", "flax") and v is not None for k, v in sys.modules.items())
print("ok", len(list(pkgutil.iter_modules(fairjax.eval.__path__))))
"""


def test_eval_imports_without_jax():
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.startswith("ok")
    n_modules = len(list(pkgutil.iter_modules([str(REPO / "fairjax" / "eval")])))
    assert res.stdout.split()[1] == str(n_modules)
