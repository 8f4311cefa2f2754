"""fairjax.eval.report: JSON/Markdown/PNG report of several systems scored on the same rows."""
import json
import os

import numpy as np
import pytest

from fairjax.eval import report as RP

PNG = b"\x89PNG\r\n\x1a\n"


def _systems():
    orig = {"reward": [-10.0, -4.0, -6.0, np.nan], "ir_female": [0.5, 1.0, np.nan, 0.9],
            "ir_male": [1.0, 0.7, 1.0, 1.0],
            "gender_verdict": ["slightly masculine-coded", "neutral", "strongly masculine-coded",
                               "neutral"]}
    # the rewrite system given as a list of row dicts
    rew = [{"reward": -8.0, "ir_female": 0.9, "ir_male": 1.0, "gender_verdict": "neutral"},
           {"reward": -4.0, "ir_female": 1.0, "ir_male": 0.9, "gender_verdict": "neutral"},
           {"reward": -3.0, "ir_female": None, "ir_male": 1.0,
            "gender_verdict": "slightly feminine-coded"},
           {"reward": -1.0, "ir_female": 0.7, "ir_male": 1.0, "gender_verdict": "neutral"}]
    return {"original": orig, "bc": rew}


def test_write_report_numbers_and_files(tmp_path):
    paths = RP.write_report(tmp_path, _systems(), {"checkpoint": "x"}, n_boot=200)
    assert set(paths) == {"json", "markdown", "reward_distributions", "impact_ratios", "verdicts"}
    for k in ("reward_distributions", "impact_ratios", "verdicts"):
        assert open(paths[k], "rb").read(8) == PNG and os.path.getsize(paths[k]) > 5000
    rep = json.load(open(paths["json"]))
    o, b = rep["systems"]["original"], rep["systems"]["bc"]
    assert o["metrics"]["reward"]["mean"] == pytest.approx(-20 / 3) and o["metrics"]["reward"]["n"] == 3
    assert b["metrics"]["ir_female"]["n_nan"] == 1
    # four-fifths: IR < 0.8 among rows where the group was present
    assert o["four_fifths_violation_rate"]["female"] == pytest.approx(1 / 3)
    assert o["four_fifths_violation_rate"]["male"] == pytest.approx(1 / 4)
    assert o["verdict_counts"] == {"strongly masculine-coded": 1, "slightly masculine-coded": 1,
                                   "neutral": 2}
    comp = rep["comparisons"]["bc"]
    assert comp["reward"]["n"] == 3 and comp["reward"]["mean_diff"] == pytest.approx(5 / 3)
    assert (comp["reward"]["wins"], comp["reward"]["ties"]) == (2, 1)
    tr = comp["verdict_transitions"]
    m = np.array(tr["matrix"])
    assert m.sum() == 4
    lab = tr["labels"]
    assert m[lab.index("strongly masculine-coded"), lab.index("slightly feminine-coded")] == 1
    assert m[lab.index("neutral"), lab.index("neutral")] == 2
    assert rep["summary"] == {"checkpoint": "x"}
    md = open(paths["markdown"]).read()
    assert "## bc vs original" in md and "![impact_ratios](impact_ratios.png)" in md
    assert "| reward |" in md


def test_plots_skipped_without_columns(tmp_path):
    paths = RP.write_report(tmp_path, {"original": {"length": [1, 2, 3]}, "x": {"length": [2, 2, 4]}},
                            n_boot=50)
    assert set(paths) == {"json", "markdown"}
    rep = json.load(open(paths["json"]))
    assert rep["comparisons"]["x"]["length"]["mean_diff"] == pytest.approx(2 / 3)


def test_reference_defaults_to_first_system(tmp_path):
    rep = RP.summarize_systems({"a": {"r": [1.0, 2.0]}, "b": {"r": [2.0, 2.0]}}, reference="zzz",
                               n_boot=20)
    assert rep["reference"] == "a" and list(rep["comparisons"]) == ["b"]


def test_bad_inputs():
    with pytest.raises(ValueError, match="different lengths"):
        RP.summarize_systems({"original": {"a": [1, 2], "b": [1]}})
    with pytest.raises(ValueError, match="rows_by_system\\['x'\\]"):
        RP.summarize_systems({"x": 3})
    with pytest.raises(ValueError, match="empty"):
        RP.summarize_systems({})


def test_summary_names_what_each_system_trained_on():
    """The CLI table says per row which reward trained it (a composite with its weights)."""
    from fairjax.eval.report import reward_name
    from fairjax.evaluate import format_summary

    comp = {"scorer": "composite", "terms": [{"term": "diversity", "weight": 1.0},
                                             {"term": "preservation", "weight": 10.0}]}
    assert reward_name(comp) == "composite(1·diversity + 10·preservation)"
    assert reward_name({"scorer": "diversity", "normalize": "standardize"}) == \
        "diversity (standardize)"
    stat = {"mean": -20.0, "ci_low": -21.0, "ci_high": -19.0}
    summary = {"trained_reward": {"scorer": "diversity"},
               "trained_reward_by_system": {"grpo": comp, "bc": {"scorer": "none"}},
               "systems": {"original": {"reward": stat}, "bc": {"reward": stat},
                           "grpo": {"reward": stat, "finished_share": {"mean": 0.5}}}}
    rows = {line.split()[0]: line for line in format_summary(summary).splitlines()[3:]}
    assert rows["grpo"].endswith("composite(1·diversity + 10·preservation)")
    assert rows["bc"].endswith("none") and "none" not in rows["original"]
    assert "50%" in rows["grpo"]
