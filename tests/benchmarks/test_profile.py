"""benchmarks/profile.py: kernel time per call and categories from a Chrome/Perfetto trace."""
import gzip
import json

import pytest

from fairjax.benchmarks import profile


def _write(path, events):
    with gzip.open(path, "wt") as f:
        json.dump({"traceEvents": events}, f)
    return str(path)


def test_device_timeline_wins_over_host(tmp_path):
    ev = [{"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/host:CPU"}},
          {"ph": "M", "name": "process_name", "pid": 2, "args": {"name": "/device:GPU:0"}},
          {"ph": "X", "pid": 1, "name": "PjitFunction(step)", "dur": 9000.0},
          {"ph": "X", "pid": 2, "name": "sm90_xmma_gemm_bf16", "dur": 3000.0},
          {"ph": "X", "pid": 2, "name": "sm90_xmma_gemm_bf16", "dur": 1000.0},
          {"ph": "X", "pid": 2, "name": "cudnn_flash_fprop", "dur": 2000.0},
          {"ph": "X", "pid": 2, "name": "loop_add_fusion", "dur": 2000.0},
          {"ph": "i", "pid": 2, "name": "marker"}]
    s = profile.summarize(_write(tmp_path / "t.json.gz", ev), calls=2)
    assert s["timeline"] == "device"
    assert s["total_ms_per_call"] == pytest.approx(4.0)  # 8000 us over 2 calls
    assert s["categories"] == pytest.approx({"matmul": 2.0, "attention": 1.0, "fusion": 1.0})
    assert s["top_kernels"][0] == {"name": "sm90_xmma_gemm_bf16", "ms_per_call": 2.0,
                                   "category": "matmul"}


def test_host_timeline_drops_runtime_noise(tmp_path):
    ev = [{"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/host:CPU"}},
          {"ph": "X", "pid": 1, "name": "$profiler.py:307 trace", "dur": 5000.0},
          {"ph": "X", "pid": 1, "name": "PjitFunction(step)", "dur": 5000.0},
          {"ph": "X", "pid": 1, "name": "transpose_copy_fusion", "dur": 1000.0},
          {"ph": "X", "pid": 1, "name": "reduce_max", "dur": 500.0}]
    s = profile.summarize(_write(tmp_path / "t.json.gz", ev), calls=1)
    assert s["timeline"] == "host"
    assert s["categories"] == pytest.approx({"copy/transpose": 1.0, "reduction": 0.5})


def test_trace_without_output_raises(tmp_path, monkeypatch):
    class NoTrace:
        def __init__(self, *a, **k):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

    monkeypatch.setattr(profile.jax.profiler, "trace", NoTrace)
    with pytest.raises(FileNotFoundError, match="perfetto_trace"):
        profile.trace(lambda: None, 1, str(tmp_path))
