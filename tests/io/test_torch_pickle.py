"""Torch-free checkpoint reader/writer: fixtures, tied storages, legacy format, malicious pickles."""
import collections
import functools
import os
import pickle
import re
import struct
import zipfile

import numpy as np
import pytest
from safetensors.numpy import load_file

from fairjax.io.torch_pickle import (UnsafePickleError, load_torch_object, load_torch_pickle,
                                     save_torch_pickle)


def _readme_table(fixtures_dir, anchor):
    """(key, dtype, shape) rows of the first README table after the line containing `anchor`."""
    text = (fixtures_dir / "README.md").read_text()
    rest = text[text.index(anchor):]
    out, started = [], False
    for line in rest.splitlines():
        m = re.match(r"^\| `([^`]+)` \| (\w+) \| \[([\d, ]*)\] \|", line)
        if m:
            started = True
            out.append((m[1], m[2], tuple(int(x) for x in m[3].split(",") if x.strip())))
        elif started:
            break
    assert out
    return out


def test_bc_model_equals_safetensors(fixtures_dir):
    sd = load_torch_pickle(fixtures_dir / "gpt2_tiny" / "bc_model.pkl")
    hf = load_file(str(fixtures_dir / "gpt2_tiny" / "hf" / "model.safetensors"))
    assert set(sd) == {"model." + k for k in hf} | {"model.lm_head.weight"}
    for k, v in hf.items():
        assert sd["model." + k].dtype == v.dtype
        np.testing.assert_array_equal(sd["model." + k], v)
    # tied: lm_head is a view of wte's storage
    assert np.shares_memory(sd["model.lm_head.weight"], sd["model.transformer.wte.weight"])


def test_iql_state_dict_keys_dtypes_shapes(fixtures_dir):
    sd = load_torch_pickle(fixtures_dir / "ilql_tiny" / "iql_state_dict.pkl")
    trunk = _readme_table(fixtures_dir, "- `model.*` (qv trunk)")
    for prefix in ("model.", "lm_target.", "lm_policy."):
        for key, dtype, shape in trunk:
            arr = sd[prefix + key]
            assert (arr.dtype.name, arr.shape) == (dtype, shape), prefix + key
    heads = _readme_table(fixtures_dir, "- heads (torch `Linear`")
    for key, dtype, shape in heads:
        assert (sd[key].dtype.name, sd[key].shape) == (dtype, shape), key
    assert "pi.weight" in {k for k, _, _ in heads} and len(sd) == 3 * len(trunk) + len(heads)
    causal = sd["model.transformer.h.0.attn.bias"][0, 0]
    np.testing.assert_array_equal(causal, np.tril(np.ones_like(causal)))
    assert np.shares_memory(sd["pi.weight"], sd["lm_policy.transformer.wte.weight"])
    assert np.shares_memory(sd["lm_policy.lm_head.weight"], sd["pi.weight"])
    # _metadata (set via BUILD) is dropped from the flat dict but kept on the raw object
    assert not any("_metadata" in k for k in sd)
    assert hasattr(load_torch_object(fixtures_dir / "ilql_tiny" / "iql_state_dict.pkl"), "_metadata")


def test_iql_grads_match_state_dict_shapes(fixtures_dir):
    grads = load_torch_pickle(fixtures_dir / "ilql_tiny" / "iql_grads.pkl")
    sd = load_torch_pickle(fixtures_dir / "ilql_tiny" / "iql_state_dict.pkl")
    assert grads and set(grads) <= set(sd)
    for k, g in grads.items():
        assert g.shape == sd[k].shape and g.dtype == np.float32 and np.isfinite(g).all()


def test_writer_round_trip_keeps_ties_dtypes_and_order(fixtures_dir, tmp_path):
    sd = load_torch_pickle(fixtures_dir / "ilql_tiny" / "iql_state_dict.pkl")
    out = tmp_path / "model.pkl"
    save_torch_pickle(out, sd)
    back = load_torch_pickle(out)
    assert list(back) == list(sd)
    for k in sd:
        assert back[k].dtype == sd[k].dtype and back[k].shape == sd[k].shape
        np.testing.assert_array_equal(back[k], sd[k])
    assert np.shares_memory(back["pi.weight"], back["lm_policy.transformer.wte.weight"])
    assert not np.shares_memory(back["pi.weight"], back["model.transformer.wte.weight"])
    with zipfile.ZipFile(out) as zf:  # torch layout: stem = file name, only allowed globals
        assert "model/data.pkl" in zf.namelist() and "model/byteorder" in zf.namelist()


def test_writer_odd_arrays(tmp_path):
    import ml_dtypes
    sd = {"scalar": np.float32(-1e4) * np.ones((), np.float32),
          "strided": np.arange(24, dtype=np.int64).reshape(4, 6)[:, ::2],
          "bf16": np.linspace(-1, 1, 6).astype(ml_dtypes.bfloat16).reshape(2, 3),
          "bool": np.array([True, False]), "empty": np.zeros((0, 3), np.float16)}
    save_torch_pickle(tmp_path / "odd.pkl", sd)
    back = load_torch_pickle(tmp_path / "odd.pkl")
    for k, v in sd.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape, k
        np.testing.assert_array_equal(back[k], v)


def test_legacy_non_zip_format(tmp_path):
    """Build a torch<1.6 stream from the zip writer's object pickle and read it back."""
    sd = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([7, 8], np.int64)}
    sd["tied"] = sd["a"]
    save_torch_pickle(tmp_path / "z.pkl", sd)
    with zipfile.ZipFile(tmp_path / "z.pkl") as zf:
        obj_pickle = zf.read("z/data.pkl")
        storages = {n.split("/")[-1]: zf.read(n) for n in zf.namelist() if "/data/" in n}
    legacy = tmp_path / "legacy.pt"
    with open(legacy, "wb") as f:
        for header in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
            pickle.dump(header, f, protocol=2)
        f.write(obj_pickle)
        keys = sorted(storages)
        pickle.dump(keys, f, protocol=2)
        sizes = {"0": 6, "1": 2}
        for k in keys:
            f.write(struct.pack("<q", sizes[k]) + storages[k])
    back = load_torch_pickle(legacy)
    for k in sd:
        np.testing.assert_array_equal(back[k], sd[k])
    assert np.shares_memory(back["a"], back["tied"])


class _Evil:
    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _zip_with_pickle(path, payload: bytes, stem="model"):
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{stem}/data.pkl", payload)
        zf.writestr(f"{stem}/version", "3\n")


@pytest.mark.parametrize("protocol", [2, 4])
def test_malicious_zip_pickle_is_refused_without_running(tmp_path, protocol):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(collections.OrderedDict(
        w=_Evil(os.system, f"touch {marker}")), protocol=protocol)
    assert b"system" in payload
    bad = tmp_path / "model.pkl"
    _zip_with_pickle(bad, payload)
    with pytest.raises(UnsafePickleError, match=r"model\.pkl.*'(posix|os|nt)\.system'"):
        load_torch_pickle(bad)
    assert not marker.exists()


@pytest.mark.parametrize("fn,args,name", [
    (eval, ("__import__('pathlib').Path('{m}').touch()",), "eval"),
    (functools.partial, (print, 1), "functools.partial"),
])
def test_other_globals_refused(tmp_path, fn, args, name):
    marker = tmp_path / "pwned"
    args = tuple(a.format(m=marker) if isinstance(a, str) else a for a in args)
    bad = tmp_path / "bad.pkl"
    _zip_with_pickle(bad, pickle.dumps({"x": _Evil(fn, *args)}, protocol=2), stem="bad")
    with pytest.raises(UnsafePickleError, match=re.escape(name)):
        load_torch_pickle(bad)
    assert not marker.exists()


def test_malicious_legacy_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "legacy.pt"
    bad.write_bytes(pickle.dumps(_Evil(os.system, f"touch {marker}"), protocol=2))
    with pytest.raises(UnsafePickleError, match="system"):
        load_torch_pickle(bad)
    assert not marker.exists()


def test_bad_archives_have_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pkl"):
        load_torch_pickle(tmp_path / "nope.pkl")
    with zipfile.ZipFile(tmp_path / "empty.pkl", "w") as zf:
        zf.writestr("x/readme", "hi")
    with pytest.raises(pickle.UnpicklingError, match="data.pkl"):
        load_torch_pickle(tmp_path / "empty.pkl")
    (tmp_path / "text.pkl").write_bytes(pickle.dumps([1, 2], protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="not a torch checkpoint"):
        load_torch_pickle(tmp_path / "text.pkl")
    (tmp_path / "list.pkl").unlink(missing_ok=True)
    save_torch_pickle(tmp_path / "ok.pkl", {"a": np.zeros(2, np.float32)})
    with zipfile.ZipFile(tmp_path / "ok.pkl") as zf, \
            zipfile.ZipFile(tmp_path / "trunc.pkl", "w") as out:
        for n in zf.namelist():
            out.writestr(n, zf.read(n)[:4] if "/data/" in n else zf.read(n))
    with pytest.raises(pickle.UnpicklingError, match="storage has 4 bytes"):
        load_torch_pickle(tmp_path / "trunc.pkl")
