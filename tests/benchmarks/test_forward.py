"""Smoke test of the forward benchmark (figures are reported, never asserted)."""
import json
import types

import pytest

from fairjax.benchmarks import forward


def test_forward_bench_runs_and_writes_json(tmp_path):
    model = "llama"
    flags = types.SimpleNamespace(model=model, size="tiny", batch=2, seq=16, steps=1, dtype=None,
                                  torch=False, json=str(tmp_path / "f.json"))
    result = forward.run(flags)
    written = json.loads((tmp_path / "f.json").read_text())
    assert written["jax_tokens_per_s"] > 0 and written["batch"] == 2 and written["seq"] == 16
    assert result["params"] == written["params"] > 0
    with pytest.raises(ValueError, match="size"):
        forward.make_config("gpt2", "enormous", None)
