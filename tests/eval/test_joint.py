"""Joint metrics of rewrites (fairjax.eval.joint) on constructed cases with known answers."""
import json

import numpy as np
import pytest

from fairjax.eval import joint
from fairjax.rewards import HashingTfidfEmbedder, code_text
from fairjax.rewards.constrained import lexicon_swaps


@pytest.fixture(scope="module")
def posts(shared_data_dir):
    with open(shared_data_dir / "hn_jobs" / "eval.jsonl", encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f]
    return [t for t in texts if len(t) > 300][:60]


def _rows(posts, rewrites, div_o=None, div_r=None, nll_o=None, nll_r=None):
    emb = HashingTfidfEmbedder(n_features=2048).fit(posts)
    n = len(posts)
    return joint.joint_rows(emb.embed(rewrites), emb.embed(posts),
                            np.zeros(n) if div_r is None else div_r,
                            np.zeros(n) if div_o is None else div_o,
                            [code_text(t).masculine for t in rewrites],
                            [code_text(t).masculine for t in posts],
                            np.ones(n) if nll_r is None else nll_r,
                            np.ones(n) if nll_o is None else nll_o)


def test_a_copy(posts):
    r = _rows(posts, list(posts), div_o=np.full(len(posts), -20.0), div_r=np.full(len(posts), -20.0))
    np.testing.assert_allclose(r["sim"], 1.0, atol=1e-6)
    assert r["retrieved"].mean() == 1.0
    assert r["acc"].sum() == 0 and r["j"].sum() == 0  # not fairer: no gain on diversity
    np.testing.assert_array_equal(r["acc_coded"], 1.0)
    np.testing.assert_array_equal(r["fl"], 1.0)


def test_a_generic_text_retrieves_at_chance(posts):
    n = len(posts)
    r = _rows(posts, ["We are hiring. Join our team. Apply now."] * n)
    assert r["retrieved"].mean() <= 2.0 / n  # one original is nearest for all of them
    assert r["sim"].mean() < 0.3
    s = joint.summarize_joint(r, n_boot=200)
    assert s["retrieval_chance"] == pytest.approx(1.0 / n)
    empty = _rows(posts, [""] * n)
    assert empty["retrieved"].sum() == 0 and empty["sim"].sum() == 0  # a zero vector finds none


def test_a_lexicon_swap_of_coded_postings_is_accurate_on_the_coded_axis(posts):
    coded = [p + "\n\nWe want a competitive, aggressive and ambitious leader." for p in posts]
    swaps = lexicon_swaps(coded)
    r = _rows(coded, swaps)
    before = np.array([code_text(t).masculine for t in coded])
    after = np.array([code_text(t).masculine for t in swaps])
    assert np.all(after < before)
    np.testing.assert_array_equal(r["acc_coded"], 1.0)
    np.testing.assert_array_equal(r["acc"], r["acc_diversity"])  # diversity equal here: acc 0
    assert r["retrieved"].mean() > 0.9 and r["sim"].mean() > 0.9
    # the inverse swap adds masculine-coded words: never accurate on the coded axis
    back = _rows(swaps, coded, div_o=np.zeros(len(posts)), div_r=np.ones(len(posts)))
    assert back["acc_coded"].sum() == 0 and back["acc"].sum() == 0
    s = joint.summarize_joint(r, n_boot=200, coded={"masculine": (before, after)},
                              diversity=(np.zeros(len(posts)), np.ones(len(posts))))
    m = s["masculine_words"]
    assert m["before"] == pytest.approx(before.mean()) and m["after"] == pytest.approx(after.mean())
    assert m["ci_high"] < 0 and s["delta_diversity"]["mean_diff"] == pytest.approx(1.0)


def test_fluency_mapping_and_j_is_zero_when_any_factor_is():
    np.testing.assert_allclose(joint.fluency([2.0 + np.log(2), 1.0, np.nan], [2.0, 3.0, 1.0]),
                               [0.5, 1.0, np.nan])
    vecs = np.eye(4)
    other = np.array([[0, 1, 0, 0]] + [[1, 0, 0, 0]] * 3, float)  # row 0 orthogonal: sim 0
    r = joint.joint_rows(np.stack([other[0], vecs[1], vecs[2], vecs[3]]), vecs,
                         div_rewrite=[1, 1, 0, 1], div_original=[0, 0, 0, 0],
                         masc_rewrite=[0, 0, 0, 5], masc_original=[1, 1, 1, 1],
                         nll_rewrite=[1, 1, 1, 1], nll_original=[1, 1, 1, 1])
    # row 0: sim 0; row 1: all factors 1; row 2: no diversity gain; row 3: more masculine words
    np.testing.assert_allclose(r["j"], [0, 1, 0, 0])
    np.testing.assert_allclose(r["acc"], [1, 1, 0, 0])
    assert r["retrieved"].tolist() == [0.0, 1.0, 1.0, 1.0]
    fl0 = joint.joint_rows(vecs, vecs, [1] * 4, [0] * 4, [0] * 4, [0] * 4, [50.0] * 4, [1.0] * 4)
    assert fl0["j"].max() < 1e-20  # fluency ~0 -> J ~0
    s = joint.summarize_joint(r, n_boot=100)
    assert s["j"]["mean"] == pytest.approx(0.25) and s["j"]["n"] == 4


def test_report_joint_table_and_pareto(tmp_path):
    from fairjax.eval import report

    vecs = np.eye(5)
    systems = {"original": {}}
    for name, gain in (("swap", 0.0), ("generic", 16.0)):
        rew = vecs if name == "swap" else np.tile(vecs[:1], (5, 1))
        cols = joint.joint_rows(rew, vecs, np.full(5, gain), np.zeros(5), np.zeros(5), np.ones(5),
                                np.ones(5), np.ones(5))
        systems[name] = {"joint": joint.summarize_joint(
            cols, n_boot=50, coded={"masculine": (np.ones(5), np.zeros(5))},
            diversity=(np.zeros(5), np.full(5, gain))), "unmatched_share": 0.0,
            "constrained_reward": {"mean": -1.0, "ci_low": -2.0, "ci_high": 0.0, "n": 5,
                                   "faithful_share": 0.4}}
    head = report._jsonable({"systems": systems, "joint_note": "note."})
    md = "\n".join(report.render_joint(head))
    assert "| `swap` | 1 [1, 1] | 0 [0, 0] |" in md  # SIM 1, ACC 0 (no diversity gain)
    assert "| `generic` | 0.2 [0, " in md and "| 1 [1, 1] | 0.2 [0, " in md and "(40%)" in md and "Retrieval chance: 20.00%" in md
    pts = {p["system"]: p for p in report.pareto_points(head)}
    assert (pts["original"]["x"], pts["original"]["y"]) == (1.0, 0.0)
    assert pts["generic"]["y"] == pytest.approx(16.0) and pts["generic"]["x"] == pytest.approx(0.2)
    path = report.plot_pareto(head, str(tmp_path / "pareto.png"))
    assert path and (tmp_path / "pareto.png").stat().st_size > 1000
    assert report.plot_pareto({"systems": {"original": {}}}, str(tmp_path / "none.png")) is None
