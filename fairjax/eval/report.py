"""Evaluation report writer: JSON summary + Markdown + PNG plots (numpy + matplotlib Agg only).

`write_report(out_dir, rows_by_system, summary)` takes per-row results of several systems scored on
the same prompts, in the same order, e.g.
  {"original": {"reward": [N], "ir_female": [N], "ir_male": [N], "gender_verdict": [N] str, ...},
   "bc": {...}, "ilql_adv8": {...}}
(columns as arrays/lists, or a list of row dicts per system) and writes

* `report.json`  per system: mean/std/bootstrap CI of every numeric column, four-fifths violation
  rates per `ir_<group>` column, verdict counts; per non-reference system: the paired comparison
  (after - before) against the reference system for every shared numeric column and the verdict
  transition matrix; plus the caller's `summary` under "summary";
* `report.md`    the same as tables, with the figures linked;
* `reward_distributions.png`  overlaid histograms of each reward column (reference vs others);
* `impact_ratios.png`  mean impact ratio per group and system with bootstrap 95% CIs and the 0.8
  four-fifths line;
* `verdicts.png`  verdict counts per system (stacked bars) and, for the first non-reference system,
  the reference -> system transition matrix;
* `pareto.png`  (with `headline` joint metrics) x = similarity to the original, y = Δ diversity vs
  the original, one point per system with 95% CI bars.

With `headline` (fairjax.evaluate's summary) and `examples`, report.md opens with the headline
(trained/reported reward, one table per system with CIs, a one-line verdict, the sanity rows, three
example rewrites, the selection tables) and moves the per-metric tables to an appendix.

A plot is skipped when its columns are absent. NaN entries (e.g. an impact ratio where a group is
absent from the pool) are left out of means and counted (`n_nan`).
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from fairjax.eval import stats
from fairjax.eval.fairness import FOUR_FIFTHS, violates_four_fifths

VERDICT_ORDER = ("strongly masculine-coded", "slightly masculine-coded", "neutral",
                 "slightly feminine-coded", "strongly feminine-coded")
VERDICT_COLORS = ("#2f5d8a", "#86a9cc", "#d9d9d9", "#e8a4a0", "#b5443b")
REWARD_FIELDS = ("reward", "diversity_reward", "q_val")
VERDICT_FIELDS = ("gender_verdict", "verdict")


def _columns(rows: Any, system: str) -> dict[str, np.ndarray]:
    """{field: [N] array} from columns (mapping) or a list of row dicts."""
    if isinstance(rows, Mapping):
        cols = {k: np.asarray(v) for k, v in rows.items()}
    elif isinstance(rows, Sequence) and all(isinstance(r, Mapping) for r in rows):
        keys = list(dict.fromkeys(k for r in rows for k in r))
        cols = {k: np.asarray([r.get(k) for r in rows]) for k in keys}
    else:
        raise ValueError(f"rows_by_system[{system!r}]: expected {{field: [N] values}} or a list of "
                         f"row dicts, got {type(rows).__name__}")
    lens = {k: v.shape[0] if v.ndim else -1 for k, v in cols.items()}
    if len(set(lens.values())) > 1:
        raise ValueError(f"rows_by_system[{system!r}]: columns have different lengths {lens}")
    return cols


def _numeric(col: np.ndarray) -> Optional[np.ndarray]:
    """float64 [N] (None -> NaN; bool -> 0/1) or None when the column is not numeric."""
    if col.ndim != 1:
        return None
    if col.dtype.kind in "biuf":
        return col.astype(np.float64)
    if col.dtype == object and all(v is None or isinstance(v, (bool, int, float, np.number)) for v in col) \
            and any(v is not None for v in col):
        return np.array([np.nan if v is None else float(v) for v in col], np.float64)
    return None


def _verdict_field(cols: Mapping[str, np.ndarray]) -> Optional[str]:
    return next((f for f in VERDICT_FIELDS if f in cols), None)


def _order(values: Sequence[str]) -> list[str]:
    seen = [v for v in dict.fromkeys(values) if v is not None]
    return [v for v in VERDICT_ORDER if v in seen] + sorted(v for v in seen if v not in VERDICT_ORDER)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (np.floating, float)):
        return None if not math.isfinite(float(x)) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


# ----------------------------------------------------------------------------- summary
def summarize_systems(rows_by_system: Mapping[str, Any], reference: str = "original",
                      n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The numbers behind the report (see module docstring); JSON-ready after `_jsonable`."""
    if not rows_by_system:
        raise ValueError("rows_by_system is empty")
    cols = {s: _columns(r, s) for s, r in rows_by_system.items()}
    ref = reference if reference in cols else next(iter(cols))
    out: dict[str, Any] = {"reference": ref, "systems": {}, "comparisons": {}}
    nums = {s: {k: v for k, v in ((k, _numeric(c)) for k, c in cs.items()) if v is not None}
            for s, cs in cols.items()}
    for s, cs in cols.items():
        n_rows = next(iter(cs.values())).shape[0] if cs else 0
        entry: dict[str, Any] = {"n_rows": n_rows,
                                 "metrics": stats.summarize_columns(nums[s], n_boot=n_boot, seed=seed)}
        ff = {k[3:]: violates_four_fifths(v) for k, v in nums[s].items() if k.startswith("ir_")}
        if ff:
            entry["four_fifths_violation_rate"] = {
                g: float(v[~np.isnan(nums[s]["ir_" + g])].mean()) if (~np.isnan(nums[s]["ir_" + g])).any()
                else float("nan") for g, v in ff.items()}
        vf = _verdict_field(cs)
        if vf:
            vals = [str(v) for v in cs[vf] if v is not None]
            entry["verdict_counts"] = {v: vals.count(v) for v in _order(vals)}
        out["systems"][s] = entry
    for s in cols:
        if s == ref:
            continue
        comp: dict[str, Any] = {}
        for k, after in nums[s].items():
            before = nums[ref].get(k)
            if before is not None and before.shape == after.shape:
                comp[k] = stats.paired_comparison(before, after, n_boot=n_boot, seed=seed)
        vr, vs = _verdict_field(cols[ref]), _verdict_field(cols[s])
        if vr and vs and cols[ref][vr].shape == cols[s][vs].shape:
            labels = _order([str(v) for v in cols[ref][vr]] + [str(v) for v in cols[s][vs]])
            idx = {v: i for i, v in enumerate(labels)}
            m = np.zeros((len(labels), len(labels)), np.int64)
            for a, b in zip(cols[ref][vr], cols[s][vs]):
                m[idx[str(a)], idx[str(b)]] += 1
            comp["verdict_transitions"] = {"labels": labels, "matrix": m.tolist(),
                                           "rows": f"{ref} verdict", "cols": f"{s} verdict"}
        out["comparisons"][s] = comp
    return out


# ----------------------------------------------------------------------------- plots
def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_reward_distributions(rows_by_system: Mapping[str, Any], path: str, fields: Sequence[str]
                              ) -> Optional[str]:
    """Overlaid histograms per reward field (one panel each); dashed lines at the means."""
    cols = {s: _columns(r, s) for s, r in rows_by_system.items()}
    fields = [f for f in fields if any(f in c and _numeric(c[f]) is not None for c in cols.values())]
    if not fields:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(fields), figsize=(5.5 * len(fields), 3.8), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, f in zip(axes[0], fields):
        data = {s: stats.drop_nan(_numeric(c[f])) for s, c in cols.items() if f in c}
        allv = np.concatenate([v for v in data.values() if v.size]) if data else np.zeros(0)
        if allv.size == 0:
            continue
        uniq = np.unique(allv)
        if 1 < uniq.size <= 60:  # lattice-valued (e.g. top-k shares): one bin per value
            mid = (uniq[1:] + uniq[:-1]) / 2
            bins = np.concatenate([[uniq[0] - (mid[0] - uniq[0])], mid, [uniq[-1] + (uniq[-1] - mid[-1])]])
        else:
            bins = np.histogram_bin_edges(allv, bins=min(40, max(10, int(np.sqrt(allv.size)))))
        for i, (s, v) in enumerate(data.items()):
            c = colors[i % len(colors)]
            label = f"{s} (mean {v.mean():.3g})"
            if i == 0:  # the reference filled, the others as outlines on top
                ax.hist(v, bins=bins, alpha=0.3, color=c, label=label, histtype="stepfilled")
            else:
                ax.hist(v, bins=bins, color=c, label=label, histtype="step", lw=1.8)
            ax.axvline(v.mean(), color=c, ls="--", lw=1.5)
        ax.set_xlabel(f)
        ax.set_ylabel("rows")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle("Reward distributions")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_impact_ratios(summary: Mapping[str, Any], path: str) -> Optional[str]:
    """Bars: mean IR per group (x) and system (colour) with bootstrap 95% CIs and the 0.8 line."""
    systems = list(summary["systems"])
    groups = sorted({k[3:] for s in systems for k in summary["systems"][s]["metrics"]
                     if k.startswith("ir_")})
    if not groups:
        return None
    plt = _plt()
    # readable at normal size: at most 10 x 4.5 inches at 100 dpi, whatever the group count
    fig, ax = plt.subplots(figsize=(min(10.0, max(5.0, 0.45 * len(groups) * len(systems) + 2)), 4.5))
    width = 0.8 / len(systems)
    for j, s in enumerate(systems):
        m = summary["systems"][s]["metrics"]
        x = np.arange(len(groups)) + (j - (len(systems) - 1) / 2) * width
        mean = np.array([m.get("ir_" + g, {}).get("mean", np.nan) for g in groups], float)
        lo = np.array([m.get("ir_" + g, {}).get("ci_low", np.nan) for g in groups], float)
        hi = np.array([m.get("ir_" + g, {}).get("ci_high", np.nan) for g in groups], float)
        ax.bar(x, mean, width * 0.9, label=s)
        ax.errorbar(x, mean, yerr=np.stack([mean - lo, hi - mean]), fmt="none", ecolor="black",
                    capsize=3, lw=1)
    ax.axhline(FOUR_FIFTHS, color="crimson", ls="--", lw=1.5, label="four-fifths rule (0.8)")
    ax.set_xticks(range(len(groups)), groups, rotation=30 if len(groups) > 4 else 0,
                  ha="right" if len(groups) > 4 else "center")
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("mean impact ratio (95% CI)")
    ax.set_title("Impact ratio per group")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_verdicts(summary: Mapping[str, Any], path: str) -> Optional[str]:
    """Stacked verdict shares per system + the reference -> first other system transition matrix."""
    systems = [s for s in summary["systems"] if "verdict_counts" in summary["systems"][s]]
    if not systems:
        return None
    labels = _order([v for s in systems for v in summary["systems"][s]["verdict_counts"]])
    trans = next((c["verdict_transitions"] for c in summary["comparisons"].values()
                  if "verdict_transitions" in c), None)
    plt = _plt()
    ncols = 2 if trans else 1
    fig, axes = plt.subplots(1, ncols, figsize=(5.5 * ncols + 1, 4.2), squeeze=False)
    ax = axes[0][0]
    bottom = np.zeros(len(systems))
    for lab in labels:
        cnt = np.array([summary["systems"][s]["verdict_counts"].get(lab, 0) for s in systems], float)
        tot = np.array([sum(summary["systems"][s]["verdict_counts"].values()) for s in systems], float)
        share = cnt / np.maximum(tot, 1)
        color = VERDICT_COLORS[VERDICT_ORDER.index(lab)] if lab in VERDICT_ORDER else None
        ax.bar(systems, share, bottom=bottom, label=lab, color=color, edgecolor="white")
        for i, (b, sh, c) in enumerate(zip(bottom, share, cnt)):
            if sh > 0.06:
                ax.text(i, b + sh / 2, f"{int(c)}", ha="center", va="center", fontsize=8)
        bottom += share
    ax.set_ylabel("share of rows")
    ax.set_title("Gender-coded wording verdicts")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    if trans:
        ax2 = axes[0][1]
        m = np.asarray(trans["matrix"], float)
        ax2.imshow(m, cmap="Blues")
        short = [lab.replace("-coded", "").replace("strongly ", "str. ").replace("slightly ", "sl. ")
                 for lab in trans["labels"]]
        ax2.set_xticks(range(len(short)), short, rotation=35, ha="right", fontsize=8)
        ax2.set_yticks(range(len(short)), short, fontsize=8)
        for (i, j), v in np.ndenumerate(m):
            ax2.text(j, i, f"{int(v)}", ha="center", va="center", fontsize=8,
                     color="white" if v > m.max() / 2 else "black")
        ax2.set_ylabel(trans["rows"])
        ax2.set_xlabel(trans["cols"])
        ax2.set_title("Verdict transitions")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def pareto_points(headline: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One point per system for the Pareto figure: x = mean SIM, y = mean Δ diversity vs the
    original, each with its CI; `original` at (1, 0)."""
    pts = []
    for name, e in headline.get("systems", {}).items():
        j = e.get("joint")
        if name == "original":
            pts.append({"system": name, "x": 1.0, "x_ci": [1.0, 1.0], "y": 0.0, "y_ci": [0.0, 0.0]})
        elif j and "sim" in j and "delta_diversity" in j:
            sim, d = j["sim"], j["delta_diversity"]
            pts.append({"system": name, "x": sim["mean"], "x_ci": [sim["ci_low"], sim["ci_high"]],
                        "y": d["mean_diff"], "y_ci": [d["ci_low"], d["ci_high"]]})
    return pts


def plot_pareto(headline: Mapping[str, Any], path: str) -> Optional[str]:
    """x = similarity to the original (SIM), y = Δ diversity reward vs the original, one point per
    system with 95% CI bars; the upper right is fairer and still the same job."""
    pts = [p for p in pareto_points(headline) if p["x"] is not None and p["y"] is not None]
    if len(pts) < 2:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, p in enumerate(pts):
        xerr = np.abs(np.array([[p["x"] - (p["x_ci"][0] if p["x_ci"][0] is not None else p["x"])],
                                [(p["x_ci"][1] if p["x_ci"][1] is not None else p["x"]) - p["x"]]]))
        yerr = np.abs(np.array([[p["y"] - (p["y_ci"][0] if p["y_ci"][0] is not None else p["y"])],
                                [(p["y_ci"][1] if p["y_ci"][1] is not None else p["y"]) - p["y"]]]))
        ax.errorbar([p["x"]], [p["y"]], xerr=xerr, yerr=yerr, fmt="o", capsize=3,
                    color=colors[i % len(colors)], label=p["system"])
        ax.annotate(p["system"], (p["x"], p["y"]), textcoords="offset points", xytext=(5, 5),
                    fontsize=8)
    ax.axhline(0.0, color="gray", lw=1, ls="--")
    tau = next((e["constrained_reward"].get("tau") for e in headline.get("systems", {}).values()
                if isinstance(e.get("constrained_reward"), Mapping)), None)
    if tau is not None:
        ax.axvline(tau, color="crimson", lw=1, ls=":", label=f"τ = {tau:g} (faithful to the right)")
    ax.set_xlabel("SIM: similarity to the original (mean, 95% CI)")
    ax.set_ylabel("Δ diversity reward vs original (95% CI)")
    ax.set_title("Fairer vs still the same job")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- markdown
def _fmt(x: Any) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:.4g}" if isinstance(x, float) else str(x)


def _ci(m: Optional[Mapping[str, Any]], value: str = "mean", lo: str = "ci_low", hi: str = "ci_high",
        signed: bool = False) -> str:
    if not m or m.get(value) is None or not math.isfinite(float(m[value])):
        return "–"
    f = (lambda x: f"{x:+.3g}") if signed else (lambda x: f"{x:.3g}")
    ok = all(m.get(k) is not None and math.isfinite(float(m[k])) for k in (lo, hi))
    return f"{f(m[value])} [{f(m[lo])}, {f(m[hi])}]" if ok else f(m[value])


def reward_name(r: Mapping[str, Any]) -> str:
    """Short name of a trained-reward spec: "diversity (standardize)",
    "composite(1·diversity + 10·preservation)", "none"."""
    name = str(r.get("scorer", "?"))
    if name == "composite" and r.get("terms"):
        name += "(" + " + ".join(f"{t.get('weight', 1):g}·{t.get('term', '?')}"
                                 for t in r["terms"]) + ")"
    if r.get("normalize") not in (None, "none"):
        name += f" ({r['normalize']})"
    return name


def verdict_line(headline: Mapping[str, Any]) -> str:
    """One sentence: the rewrite system with the largest reported-reward gain, whether it holds with
    length controlled, what it keeps and finishes, and whether the reward can be gamed."""
    systems = {k: v for k, v in headline.get("systems", {}).items() if k != "original"}
    cands = [(v["vs_original"]["reward"]["mean_diff"], k) for k, v in systems.items()
             if v.get("vs_original", {}).get("reward", {}).get("mean_diff") is not None]
    if not cands:
        return "Verdict: no rewrite system to compare."
    _, best = max(cands)
    e = systems[best]
    d = e["vs_original"]["reward"]
    lc = e.get("reward_length_controlled", {}).get("vs_original", {})
    sig = d["ci_low"] is not None and (d["ci_low"] > 0 or d["ci_high"] < 0)
    lc_sig = lc.get("covariate_ci") and all(x is not None for x in lc["covariate_ci"]) and \
        (lc["covariate_ci"][0] > 0 or lc["covariate_ci"][1] < 0)
    out = (f"Verdict: `{best}` changes the reported reward most, by {_ci(d, 'mean_diff', signed=True)} "
           f"vs the originals ({'CI excludes 0' if sig else 'not distinguishable from 0'}; with length "
           f"as covariate {lc.get('covariate', float('nan')):+.3g}, "
           f"{'CI excludes 0' if lc_sig else 'not distinguishable from 0'})")
    if "finished_share" in e:
        out += f"; it finishes {e['finished_share']['mean']:.0%} of its rewrites"
    pres = e.get("preservation", {})
    if "chrf" in pres:
        out += f" and keeps chrF {pres['chrf']['mean']:.0f}"
        if "skills_kept" in pres and pres["skills_kept"].get("mean") is not None:
            out += f", {pres['skills_kept']['mean']:.0%} of the skills"
    gamed = [k for k, v in headline.get("sanity", {}).items() if isinstance(v, Mapping)
             and v.get("vs_original", {}).get("ci_low") is not None and v["vs_original"]["ci_low"] > 0]
    if gamed:
        out += (f". Caution: {' and '.join(gamed)} also score above the originals, so this reward can "
                "be gamed by text that no longer describes the job; read it with the preservation columns")
    return out + "."


def _cell(text: Any, width: int = 360) -> str:
    t = str(text or "").replace("|", "\\|").replace("\n", " ⏎ ")
    return t if len(t) <= width else t[:width] + " …"


JOINT_COLUMNS = (("SIM", "sim"), ("ACC", "acc"), ("FL", "fl"), ("J", "j"),
                 ("identity retrieval", "retrieved"))


def render_joint(headline: Mapping[str, Any]) -> list[str]:
    """Markdown table: per rewrite system SIM, ACC, FL, J, identity retrieval, Δ diversity,
    masculine/feminine-coded words before → after, the constrained reward (faithful share) and the
    unmatched share, each with its 95% CI; [] when no system has joint metrics."""
    rows = [(n, e) for n, e in headline.get("systems", {}).items() if e.get("joint")]
    if not rows:
        return []
    head = ([h for h, _ in JOINT_COLUMNS] + ["Δ diversity", "masculine words", "feminine words",
                                             "constrained reward (faithful)", "unmatched"])
    lines = ["### Joint metrics: fairer and the same job", "", "| system | " + " | ".join(head) + " |",
             "|" + "---|" * (len(head) + 1)]
    for name, e in rows:
        j = e["joint"]
        cells = [_ci(j.get(k)) for _, k in JOINT_COLUMNS]
        cells.append(_ci(j.get("delta_diversity"), "mean_diff", signed=True))
        for k in ("masculine_words", "feminine_words"):
            w = j.get(k)
            cells.append(f"{_fmt(w['before'])} → {_fmt(w['after'])} "
                         f"({_ci(w, 'mean_diff', signed=True)})" if w else "–")
        c = e.get("constrained_reward")
        cells.append(f"{_ci(c)} ({c['faithful_share']:.0%})" if c else "–")
        u = e.get("unmatched_share")
        cells.append("–" if u is None else f"{u:.1%}")
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    chance = next((e["joint"].get("retrieval_chance") for _, e in rows), None)
    lines += ["", headline.get("joint_note", "") + (f" Retrieval chance: {chance:.2%}." if chance
                                                    else ""), ""]
    return lines


def render_headline(headline: Mapping[str, Any], examples: Sequence[Mapping[str, Any]] = ()) -> list[str]:
    """The first page: rewards trained/reported, one table per system with CIs, the verdict,
    the sanity row, three examples and the corpus selection tables."""
    tr = headline.get("trained_reward_by_system", {})
    rep = headline.get("reported_reward", {})
    lines = [f"**Reported reward:** {reward_name(rep)}"
             + (f" (pool {rep['pool']}; {rep.get('settings', {})})" if rep.get("pool") else "")
             + f". **Trained reward:** {reward_name(headline.get('trained_reward', {}))}"
             + (f" — {headline['trained_reward']['note']}" if headline.get("trained_reward", {}).get("note")
                else "") + ".", ""]
    attrs = sorted({a for v in headline["systems"].values() for a in v.get("fairness", {})})
    head = (["system", "trained on", "reported reward", "Δ vs original", "Δ length-controlled"]
            + [f"impact ratio ({a})" for a in attrs]
            + ["cosine", "chrF", "skills kept", "header kept", "length ratio", "finished"])
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, e in headline["systems"].items():
        pres = e.get("preservation", {})
        lc = e.get("reward_length_controlled", {}).get("vs_original", {})
        lc_cell = _ci({"m": lc.get("covariate"), "lo": (lc.get("covariate_ci") or [None, None])[0],
                       "hi": (lc.get("covariate_ci") or [None, None])[1]}, "m", "lo", "hi", True) if lc else "–"
        row = [f"`{name}`", reward_name(tr.get(name, {})) if name != "original" else "–",
               _ci(e.get("reward")), _ci(e.get("vs_original", {}).get("reward"), "mean_diff", signed=True),
               lc_cell]
        for a in attrs:
            r = e.get("fairness", {}).get(a, {}).get("ratio")
            row.append(_ci(r, "value") if r else "–")
        row += [_ci(pres.get(m)) for m in ("cosine", "chrf", "skills_kept", "header_kept", "length_ratio")]
        row.append(_ci(e.get("finished_share")))
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "Means with percentile-bootstrap 95% CIs over postings. Impact ratio = min/max of the "
              "corpus selection rates over groups (top-k matched candidates; fairlearn's "
              "demographic_parity_ratio). Δ length-controlled: the system effect with log(1 + chars) "
              "as covariate. Preservation compares each rewrite with its own original (cosine under "
              "the reward's embedder; chrF 0–100; shares of skills and header fields kept; "
              "characters rewrite/original); finished = rewrites that ended with `</a>`.", "",
              verdict_line(headline), ""]
    lines += render_joint(headline)
    if headline.get("four_fifths_note"):
        lines += [f"_Note: {headline['four_fifths_note']}_", ""]
    lines += render_sanity(headline.get("sanity"))
    if examples:
        names = [k for k in examples[0] if k != "id"]
        lines += ["### Examples (first three eval postings)", "",
                  "| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
        for ex in examples:
            lines.append("| " + " | ".join(_cell(ex.get(n)) for n in names) + " |")
        lines.append("")
    tables = [(n, a, t) for n, e in headline["systems"].items() for a, t in e.get("fairness", {}).items()]
    if tables:
        lines += ["### Selection rates per group (fairlearn MetricFrame form)", ""]
        for n, a, t in tables:
            lines += [f"`{n}`, {a}:", "", "| group | selection rate [95% CI] | matched | selected |",
                      "|---|---|---|---|"]
            for g, v in t["by_group"].items():
                lines.append(f"| {g} | {_ci(v, 'value')} | {v['n_pool']} | {v['n_selected']} |")
            lines += [f"| overall | {_ci(t['overall'], 'value')} | | |",
                      f"| difference (max − min) | {_ci(t['difference'], 'value')} | | |",
                      f"| ratio (min / max) | {_ci(t['ratio'], 'value')} | | |", ""]
    return lines


SANITY_LABELS = {"shuffled_words": "original, words shuffled", "first_half": "first half only",
                 "empty": "empty text"}


def render_sanity(san: Optional[Mapping[str, Any]]) -> list[str]:
    """Markdown: the sanity texts under the reported reward and the constrained reward."""
    if not san:
        return []
    lines = ["### Sanity: can the reward be gamed?", "",
             "| text | reported reward | Δ vs original (paired) | constrained reward | Δ vs original "
             "(constrained) | unmatched |", "|---|---|---|---|---|---|",
             f"| original postings | {_ci(san['original'])} | – | "
             f"{_ci(san['original'].get('constrained'))} | – | – |"]
    for k, v in san.items():
        if k == "original":
            continue
        label = SANITY_LABELS.get(k, f"generic text “{v.get('text', '')}”" if k == "generic_text" else k)
        c = v.get("constrained") or {}
        u = v.get("unmatched_share")
        lines.append(f"| {label} | {_ci(v)} | {_ci(v['vs_original'], 'mean_diff', signed=True)} | "
                     f"{_ci(c) if c else '–'} | "
                     f"{_ci(c.get('vs_original'), 'mean_diff', signed=True) if c else '–'} | "
                     f"{'–' if u is None else f'{u:.0%}'} |")
    return lines + ["", "A reward that rates these texts at or above the originals can be raised by "
                    "rewrites that no longer describe the job; the constrained reward gives every "
                    "unfaithful text a floor below every faithful one. Unmatched: texts that match no "
                    "candidate (no embedding features), scored as no match.", ""]


def render_markdown(summary: Mapping[str, Any], images: Mapping[str, str], title: str,
                    extra: Optional[Mapping[str, Any]] = None,
                    headline: Optional[Mapping[str, Any]] = None,
                    examples: Sequence[Mapping[str, Any]] = ()) -> str:
    lines = [f"# {title}", ""]
    if headline:
        lines += render_headline(headline, examples)
    if images:
        lines += ["## Figures", ""] + [f"![{k}]({os.path.basename(v)})" for k, v in images.items()] + [""]
    lines += ["## Appendix: every metric per system" if headline else "## Metrics per system", "",
              f"Reference system: `{summary['reference']}`. Means with percentile "
              "bootstrap 95% CIs; NaN rows (e.g. a group absent from the candidate pool) excluded.", ""]
    for s, e in summary["systems"].items():
        lines += [f"## {s} ({e['n_rows']} rows)", "", "| metric | mean | std | 95% CI | n |",
                  "|---|---|---|---|---|"]
        for k, m in e["metrics"].items():
            lines.append(f"| {k} | {_fmt(m['mean'])} | {_fmt(m['std'])} | "
                         f"[{_fmt(m['ci_low'])}, {_fmt(m['ci_high'])}] | {m['n']} |")
        if "four_fifths_violation_rate" in e:
            lines += ["", "Four-fifths violations (IR < 0.8): " + ", ".join(
                f"{g}: {_fmt(v)}" for g, v in e["four_fifths_violation_rate"].items())]
        if "verdict_counts" in e:
            lines += ["", "Verdicts: " + ", ".join(f"{k}: {v}" for k, v in e["verdict_counts"].items())]
        lines.append("")
    for s, comp in summary["comparisons"].items():
        lines += [f"## {s} vs {summary['reference']} (paired, d = {s} − {summary['reference']})", "",
                  "| metric | mean before | mean after | mean diff | 95% CI (bootstrap) | paired SE "
                  "| wins/ties/losses | n |", "|---|---|---|---|---|---|---|---|"]
        for k, c in comp.items():
            if k == "verdict_transitions":
                continue
            lines.append(f"| {k} | {_fmt(c['mean_before'])} | {_fmt(c['mean_after'])} | "
                         f"{_fmt(c['mean_diff'])} | [{_fmt(c['ci_low'])}, {_fmt(c['ci_high'])}] | "
                         f"{_fmt(c['stderr'])} | {c['wins']}/{c['ties']}/{c['losses']} | {c['n']} |")
        lines.append("")
    if extra:
        lines += ["## Run summary", "", "```json", json.dumps(_jsonable(dict(extra)), indent=1), "```", ""]
    return "\n".join(lines)


def write_report(out_dir: str | os.PathLike, rows_by_system: Mapping[str, Any],
                 summary: Optional[Mapping[str, Any]] = None, *, reference: str = "original",
                 reward_fields: Sequence[str] = REWARD_FIELDS, n_boot: int = 1000, seed: int = 0,
                 title: str = "fairjax evaluation report",
                 headline: Optional[Mapping[str, Any]] = None,
                 examples: Sequence[Mapping[str, Any]] = ()) -> dict[str, str]:
    """Write report.json, report.md and the PNG plots into out_dir; returns {name: path}.
    `headline` (evaluate's summary) and `examples` ([{"id", system: text}]) put the headline
    section first and the per-metric tables in an appendix."""
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    numbers = summarize_systems(rows_by_system, reference, n_boot, seed)
    images: dict[str, str] = {}
    for name, fn in (("reward_distributions", lambda p: plot_reward_distributions(
                         rows_by_system, p, reward_fields)),
                     ("impact_ratios", lambda p: plot_impact_ratios(numbers, p)),
                     ("verdicts", lambda p: plot_verdicts(numbers, p)),
                     ("pareto", lambda p: plot_pareto(_jsonable(dict(headline or {})), p))):
        got = fn(os.path.join(out_dir, f"{name}.png"))
        if got:
            images[name] = got
    paths = {"json": os.path.join(out_dir, "report.json"), "markdown": os.path.join(out_dir, "report.md"),
             **images}
    with open(paths["json"], "w", encoding="utf-8") as f:
        json.dump(_jsonable({**numbers, "summary": dict(summary or {})}), f, indent=1)
        f.write("\n")
    with open(paths["markdown"], "w", encoding="utf-8") as f:
        f.write(render_markdown(numbers, images, title, summary, _jsonable(dict(headline or {})),
                                examples))
    return paths
