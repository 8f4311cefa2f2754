"""FMs-at-work formats: detection, splitting, convert_bc renaming, writers, ILQL parts loading."""
import numpy as np
import pytest

from fairjax.errors import CheckpointMismatchError
from fairjax.io.torch_pickle import load_torch_pickle, save_torch_pickle
from fairjax.io.upstream import (HEADS, TRUNKS, bc_to_converted, detect_format, split_upstream,
                                 to_upstream_bc, to_upstream_iql)


@pytest.fixture(scope="module")
def iql_sd(fixtures_dir):
    return load_torch_pickle(fixtures_dir / "ilql_tiny" / "iql_state_dict.pkl")


@pytest.fixture(scope="module")
def bc_sd(fixtures_dir):
    return load_torch_pickle(fixtures_dir / "gpt2_tiny" / "bc_model.pkl")


def test_detect_formats(iql_sd, bc_sd):
    assert detect_format(bc_sd) == "bc"
    assert detect_format(bc_to_converted(bc_sd)) == "converted"
    assert detect_format(iql_sd) == "iql"
    assert detect_format({k[len("model."):]: v for k, v in bc_sd.items()}) == "hf"
    with pytest.raises(ValueError, match=r"prefixes found: \['encoder', 'foo'\]"):
        detect_format({"encoder.x": 1, "foo.y": 2})


def test_bc_to_converted_matches_convert_bc(bc_sd):
    conv = bc_to_converted(bc_sd)
    assert list(conv) == ["lm_policy" + k[len("model"):] for k in bc_sd]
    assert conv["lm_policy.lm_head.weight"] is bc_sd["model.lm_head.weight"]
    assert bc_to_converted({"other.w": 1, "modelx.model.y": 2}) == {"other.w": 1, "lm_policyx.model.y": 2}


def test_split_iql(iql_sd):
    parts = split_upstream(iql_sd)
    assert parts.format == "iql" and not parts.notes
    for name, prefix in (("qv", "model."), ("target", "lm_target."), ("policy", "lm_policy.")):
        sd = getattr(parts, name)
        want = {k[len(prefix):] for k in iql_sd if k.startswith(prefix) and ".attn.bias" not in k
                and ".attn.masked_bias" not in k}
        assert set(sd) == want and all(k.startswith(("transformer.", "lm_head.")) for k in sd)
    assert sorted(parts.heads) == sorted(HEADS)
    np.testing.assert_array_equal(parts.heads["q"]["2.weight"], iql_sd["q.2.weight"])
    # dict-style access by upstream group name (used by the ILQL agent)
    assert parts["model"] is parts.qv and parts.get("lm_policy") is parts.policy
    assert parts["target_q2"] is parts.heads["target_q2"] and parts.get("nope") is None


def test_iql_writer_round_trip_exact(iql_sd, tmp_path):
    parts = split_upstream(iql_sd)
    back = to_upstream_iql(parts.policy, parts.qv, parts.target, parts.heads)
    assert list(back) == list(iql_sd)  # upstream order, buffers re-inserted
    for k, v in iql_sd.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape, k
        np.testing.assert_array_equal(back[k], v, err_msg=k)
    save_torch_pickle(tmp_path / "model.pkl", back)
    again = load_torch_pickle(tmp_path / "model.pkl")
    assert np.shares_memory(again["pi.weight"], again["lm_policy.transformer.wte.weight"])


def test_bc_writer_round_trip(bc_sd):
    parts = split_upstream(bc_sd)
    assert parts.format == "bc" and parts.qv is None and parts.heads is None
    back = to_upstream_bc(parts.policy, with_buffers=False)
    assert list(back) == list(bc_sd)
    for k in bc_sd:
        np.testing.assert_array_equal(back[k], bc_sd[k])


def test_untied_head_is_reported(bc_sd):
    sd = dict(bc_sd)
    sd["model.lm_head.weight"] = sd["model.lm_head.weight"] + 1.0
    with pytest.warns(UserWarning, match="untied head"):
        parts = split_upstream(sd)
    assert any("policy: lm_head.weight differs" in n for n in parts.notes)


def test_bad_iql_checkpoints(iql_sd):
    sd = dict(iql_sd)
    sd["pi.weight"] = sd["pi.weight"] * 2
    with pytest.raises(CheckpointMismatchError, match="pi.weight differs"):
        split_upstream(sd)
    sd = dict(iql_sd, **{"critic.0.weight": np.zeros(2, np.float32)})
    with pytest.raises(CheckpointMismatchError, match=r"unexpected keys \(1\): critic\.0\.weight"):
        split_upstream(sd)
    sd = {k: v for k, v in iql_sd.items() if not k.startswith("model.")}
    with pytest.raises(CheckpointMismatchError, match=r"missing keys \(1\): model\.\*"):
        split_upstream(sd)
    sd = dict(bc_to_converted({k: v for k, v in iql_sd.items() if k.startswith("model.")}),
              **{"model.transformer.wte.weight": iql_sd["model.transformer.wte.weight"]})
    assert detect_format(sd) == "bc"  # mixed prefixes are rejected, not silently dropped
    with pytest.raises(CheckpointMismatchError, match="lm_policy"):
        split_upstream(sd)


def test_load_upstream_ilql_parts(fixtures_dir, iql_sd):
    from fairjax.io.loader import load_upstream_ilql

    out = load_upstream_ilql(fixtures_dir / "ilql_tiny" / "iql_state_dict.pkl",
                             base=fixtures_dir / "gpt2_tiny" / "hf")
    assert out["format"] == "iql" and len(out["tokenizer"]) == out["config"].vocab_size
    for name, prefix in (("policy", "lm_policy"), ("qv", "model"), ("target", "lm_target")):
        np.testing.assert_array_equal(out[name]["wte"]["embedding"],
                                      iql_sd[f"{prefix}.transformer.wte.weight"])
    assert sorted(out["heads"]) == sorted(HEADS)
    np.testing.assert_array_equal(out["heads"]["q2"]["fc_out"]["kernel"], iql_sd["q2.2.weight"].T)
    np.testing.assert_array_equal(out["heads"]["v"]["fc_in"]["bias"], iql_sd["v.0.bias"])
    assert set(TRUNKS) == {"model", "lm_target", "lm_policy"}
