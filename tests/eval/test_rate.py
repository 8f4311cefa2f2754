"""fairjax.eval.rate: RATE estimators (upstream formulas), file schema, synthetic recovery, plot."""
import json

import numpy as np
import pytest

from fairjax.eval import rate as R

RM = "RLHFlow/ArmoRM-Llama3-8B-v0.1"


def _upstream_reference(w, o, s, d):
    """Per-unit list building as rate.md §3 describes it, written independently of fairjax."""
    def unpaired(t, u):
        t, u = np.asarray(t), np.asarray(u)
        return t.mean() - u.mean(), np.sqrt(t.var(ddof=1) / len(t) + u.var(ddof=1) / len(u))

    def paired(t, u):
        diff = np.asarray(t) - np.asarray(u)
        return diff.mean(), diff.std(ddof=1) / np.sqrt(len(diff))

    out = {}
    o1 = [x for x, wi in zip(o, w) if wi]
    o0 = [x for x, wi in zip(o, w) if not wi]
    out["naive_effect"] = unpaired(o1, o0)
    t_s = [oi if wi else si for oi, si, wi in zip(o, s, w)]
    u_s = [si if wi else oi for oi, si, wi in zip(o, s, w)]
    t_r = [di if wi else si for di, si, wi in zip(d, s, w)]
    u_r = [si if wi else di for di, si, wi in zip(d, s, w)]
    pick = lambda xs, g: [x for x, wi in zip(xs, w) if bool(wi) == g]
    out["ATE_single_rewrite"] = paired(t_s, u_s)
    out["ATT_single_rewrite"] = paired(pick(t_s, True), pick(u_s, True))
    out["ATU_single_rewrite"] = paired(pick(t_s, False), pick(u_s, False))
    out["ATE_rewritten_rewrite"] = unpaired(t_r, u_r)
    out["ATT_rewritten_rewrite"] = unpaired(pick(t_r, True), pick(u_r, True))
    out["ATU_rewritten_rewrite"] = unpaired(pick(t_r, False), pick(u_r, False))
    n1, n0 = len(o1), len(o0)
    out["reward_std"] = np.sqrt(((n1 - 1) * np.var(o1, ddof=1) + (n0 - 1) * np.var(o0, ddof=1))
                                / (n1 + n0 - 2))
    return out


def _random_scores(n=40, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.random(n) < 0.4
    o, s, d = rng.normal(size=(3, n))
    return w, o, s, d


def test_matches_upstream_formulas():
    w, o, s, d = _random_scores()
    e = R.treatment_effects(w, o, s, d, n_boot=0)
    ref = _upstream_reference(w, o, s, d)
    for key in R.ESTIMATORS:
        assert e[key] == pytest.approx(ref[key][0], abs=1e-12), key
        assert e[key + "_stderr"] == pytest.approx(ref[key][1], abs=1e-12), key
    assert e["reward_std"] == pytest.approx(ref["reward_std"])
    assert (e["Y1_count"], e["Y0_count"]) == (int(w.sum()), int((~w).sum()))
    n1, n0 = e["Y1_count"], e["Y0_count"]
    for kind in ("single_rewrite", "rewritten_rewrite"):  # ATE is the n-weighted ATT/ATU mixture
        mix = (n1 * e[f"ATT_{kind}"] + n0 * e[f"ATU_{kind}"]) / (n1 + n0)
        assert e[f"ATE_{kind}"] == pytest.approx(mix)
    # paired SE of the RATE ATT is the SE of the per-unit D - S contrasts
    dd = (d - s)[w]
    assert e["ATT_rewritten_rewrite_paired_stderr"] == pytest.approx(dd.std(ddof=1) / np.sqrt(dd.size))
    assert e["rewrite_effect_w_0"] == pytest.approx((d - o)[~w].mean())
    assert "ATE_rewritten_rewrite_ci_low" not in e


def test_synthetic_rate_recovers_tau_naive_biased():
    sc, truth = R.simulate(n=2000, tau=1.0, confounding=1.5, artifact=0.8, seed=0)
    e = R.treatment_effects(sc.w, sc.original, sc.rewrite, sc.rewritten_rewrite, n_boot=500, seed=0)
    tau = truth["tau"]
    for key in ("ATE_rewritten_rewrite", "ATT_rewritten_rewrite", "ATU_rewritten_rewrite"):
        assert e[key + "_ci_low"] <= tau <= e[key + "_ci_high"], (key, e[key])
        lo, hi = R.normal_ci(e, key, stderr_suffix="_paired_stderr")
        assert lo <= tau <= hi
        lo, hi = R.normal_ci(e, key)  # upstream (unpaired) SE covers too, just wider
        assert lo <= tau <= hi
        assert e[key + "_paired_stderr"] < e[key + "_stderr"]
    # naive: biased by confounding; its CI excludes tau and the bias matches the construction
    assert e["naive_effect_ci_low"] > tau
    assert e["naive_effect"] - tau == pytest.approx(truth["naive_bias"], abs=0.2)
    # single rewrite: ATT biased down, ATU biased up by the rewrite artefact
    assert e["ATT_single_rewrite_ci_high"] < tau < e["ATU_single_rewrite_ci_low"]
    assert e["rewrite_effect_w_1"] == pytest.approx(0.8, abs=0.05)


def test_bootstrap_is_seeded_and_stratified():
    w, o, s, d = _random_scores(60, seed=3)
    a = R.treatment_effects(w, o, s, d, n_boot=200, seed=7)
    assert a == R.treatment_effects(w, o, s, d, n_boot=200, seed=7)
    assert a != R.treatment_effects(w, o, s, d, n_boot=200, seed=8)
    for key in R.ESTIMATORS:
        assert a[key + "_ci_low"] < a[key + "_ci_high"]


def test_nan_rows_dropped_and_counted():
    w, o, s, d = _random_scores()
    d2 = d.copy()
    d2[[1, 5]] = np.nan
    e = R.treatment_effects(w, o, s, d2, n_boot=0)
    keep = np.ones(w.size, bool)
    keep[[1, 5]] = False
    ref = R.treatment_effects(w[keep], o[keep], s[keep], d[keep], n_boot=0)
    assert e.pop("n_dropped_nan") == 2 and ref.pop("n_dropped_nan") == 0
    assert e == ref


def _rate_line(w, o, s, d, key=RM):
    """A line exactly as RATE's score_dataset.py writes it."""
    return {"w_original": w, "completions": {"original": "a", "rewrite": "b", "rewritten rewrite": "c"},
            "reward_question": "Write a movie review: ", key: {"original": o, "rewrite": s,
                                                               "rewritten rewrite": d}}


def test_reads_rate_scored_jsonl_and_roundtrips(tmp_path):
    w, o, s, d = _random_scores(12, seed=1)
    p = tmp_path / "imdb_ArmoRM_scored_20241121_000000.jsonl"
    p.write_text("\n".join(json.dumps(_rate_line(bool(a), float(b), float(c), float(e)))
                           for a, b, c, e in zip(w, o, s, d)) + "\n")
    recs = R.read_scored_jsonl(p)
    sc = R.scores_from_records(recs, None, where=str(p))  # the only block is picked automatically
    np.testing.assert_array_equal(sc.w, w)
    np.testing.assert_allclose(sc.rewritten_rewrite, d)
    e1 = R.effects_from_records(recs, RM, n_boot=0)
    out = tmp_path / "re.jsonl"
    R.write_scored_jsonl(out, [R.scored_record(r["w_original"], r["completions"], {RM: r[RM]},
                                               r["reward_question"]) for r in recs])
    assert R.effects_from_records(R.read_scored_jsonl(out), RM, n_boot=0) == e1
    # RATE's rewrites-file layout: a JSON object keyed by str(index)
    obj = tmp_path / "obj.json"
    obj.write_text(json.dumps({str(i): r for i, r in enumerate(json.loads(x) for x in
                                                               p.read_text().splitlines())}, indent=2))
    assert R.effects_from_records(R.read_scored_jsonl(obj), RM, n_boot=0) == e1
    # effects JSON is valid JSON with NaN -> null
    ej = R.write_effects_json(tmp_path / "e.json", {**e1, "x": float("nan")})
    assert json.loads(open(ej).read())["x"] is None


def test_bad_scored_files(tmp_path):
    p = tmp_path / "bad.jsonl"
    good = json.dumps(_rate_line(True, 0.1, 0.2, 0.3))
    cases = [
        ("{not json", r"bad.jsonl:2: invalid JSON"),
        (json.dumps({"completions": {}, RM: {}}), r"bad.jsonl:2: missing 'w_original'"),
        (json.dumps(_rate_line("yes", 0.1, 0.2, 0.3)), r"bad.jsonl:2: 'w_original' must be a bool"),
        (json.dumps(_rate_line(False, 0.1, 0.2, 0.3, key="ArmoRM")), r"bad.jsonl:2: missing reward block"),
        (json.dumps(_rate_line(False, 0.1, None, 0.3)), r"bad.jsonl:2: .*\['rewrite'\] must be a number"),
    ]
    for line, msg in cases:
        p.write_text(good + "\n" + line + "\n")
        with pytest.raises(R.RateFormatError, match=msg):
            R.scores_from_records(R.read_scored_jsonl(p), RM, where=str(p))
    two = dict(_rate_line(True, 0.1, 0.2, 0.3), ArmoRM={"original": 1, "rewrite": 2, "rewritten rewrite": 3})
    with pytest.raises(R.RateFormatError, match="pass reward_key"):
        R.scores_from_records([two], None)
    with pytest.raises(ValueError, match="rows"):
        R.treatment_effects([True, False], [1.0], [1.0], [1.0])


def test_plot_naive_vs_rate(tmp_path):
    sc, truth = R.simulate(n=300, seed=1)
    e = R.treatment_effects(sc.w, sc.original, sc.rewrite, sc.rewritten_rewrite, n_boot=100)
    path = R.plot_naive_vs_rate({"synthetic": e, "copy": e}, tmp_path / "p.png",
                                truth={"synthetic": truth["tau"]})
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
