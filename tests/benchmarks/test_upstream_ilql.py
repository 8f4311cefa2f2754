"""benchmarks/upstream_ilql.py: upstream ILQL's sample_raw as a decoding peer.

The compatibility layer is checked in a subprocess (it adds names to transformers and stub modules
to sys.modules, which must not leak into the rest of the suite): a module carrying the imports
upstream's GPT-2 copy and ILQL model make at load time imports under the installed transformers.
With $FAIRJAX_UPSTREAM_ILQL pointing at a checkout of Sea-Snell/Implicit-Language-Q-Learning, the
real sample_raw runs on a tiny GPT-2 and makes exactly B x N tokens.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from fairjax.benchmarks import upstream_ilql

pytest.importorskip("torch")
pytest.importorskip("transformers")

# The import statements upstream's models/gpt2_optional_final_ln.py and models/iql_model.py
# execute at load time (names only; the modules' code is not reproduced).
UPSTREAM_IMPORTS = """
from transformers.activations import ACT2FN
from transformers.modeling_outputs import BaseModelOutputWithPastAndCrossAttentions
from transformers.modeling_utils import (Conv1D, PreTrainedModel, SequenceSummary,
                                         find_pruneable_heads_and_indices, prune_conv1d_layer)
from transformers.file_utils import (ModelOutput, add_code_sample_docstrings,
                                     add_start_docstrings, add_start_docstrings_to_model_forward,
                                     replace_return_docstrings)
from transformers.utils.model_parallel_utils import assert_device_map, get_device_map
import wandb
"""


def _fake_tree(root):
    models = root / "src" / "models"
    models.mkdir(parents=True)
    (models / "iql_model.py").write_text(UPSTREAM_IMPORTS)
    return root


def test_source_root_accepts_the_checkout_or_its_src(tmp_path):
    _fake_tree(tmp_path)
    assert upstream_ilql.source_root(str(tmp_path)) == str(tmp_path / "src")
    assert upstream_ilql.source_root(str(tmp_path / "src")) == str(tmp_path / "src")


def test_source_root_names_the_missing_module(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"--upstream_src=.*models/iql_model\.py"):
        upstream_ilql.source_root(str(tmp_path))


def test_compat_lets_upstream_imports_load_and_head_mask_stays_none(tmp_path):
    root = _fake_tree(tmp_path)
    code = textwrap.dedent(f"""
        import sys
        from fairjax.benchmarks import upstream_ilql
        upstream_ilql.install_compat()
        sys.path.insert(0, {str(root / "src")!r})
        import models.iql_model
        from transformers.modeling_utils import PreTrainedModel
        assert PreTrainedModel.get_head_mask(None, None, 3) == [None, None, None]
        try:
            PreTrainedModel.get_head_mask(None, [1.0], 3)
        except NotImplementedError:
            print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ok")


UPSTREAM = os.environ.get("FAIRJAX_UPSTREAM_ILQL")


@pytest.mark.slow
@pytest.mark.skipif(not UPSTREAM, reason="$FAIRJAX_UPSTREAM_ILQL (an upstream ILQL checkout) unset")
def test_real_sample_raw_makes_every_token():
    code = textwrap.dedent(f"""
        from fairjax.benchmarks import upstream_ilql
        from fairjax.models.gpt2 import PRESETS
        r = upstream_ilql.upstream_generate({UPSTREAM!r}, PRESETS["tiny"], 3, 5, 4, 1, 8.0)
        print(r["new_tokens"])
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert int(out.stdout.split()[-1]) == 3 * 4  # B x N: no row stopped, none ran over
