"""Running a `python -m fairjax.<module>` command as a user would (no PyTorch on the path, CPU),
for the CLI tests."""
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# third-party log lines a fairjax command must not print
NOISE = ("PyTorch was not found", "directory is read only", "orbax", "Unable to initialize backend")


def run_cli(module, *args, tmp_path):
    site = tmp_path / "no_torch"  # as on a machine without PyTorch (transformers' banner case)
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text("import sys\nsys.modules['torch'] = None\n")
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=f"{site}{os.pathsep}{REPO}")
    env.pop("FAIRJAX_TRACEBACK", None)
    return subprocess.run([sys.executable, "-m", f"fairjax.{module}", *args], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=300)
