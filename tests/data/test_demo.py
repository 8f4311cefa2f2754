"""Synthetic demo corpus: determinism, schema, gender/wording correlation, files, heuristics."""
import json

from fairjax.data.demo import REGIONS, make_candidates, make_postings, write_demo
from fairjax.data.demo.generator import AGENTIC, CANDIDATE_AGENTIC, CANDIDATE_COMMUNAL, COMMUNAL
from fairjax.data.jobs import JobsDataset, extract_fields


def test_deterministic_and_seed_dependent():
    assert make_postings(30, 7) == make_postings(30, 7)
    assert make_candidates(30, 7) == make_candidates(30, 7)
    assert make_postings(30, 7) != make_postings(30, 8)
    assert make_postings(5, 7) == make_postings(30, 7)[:5]


def test_postings_vary_and_parse():
    posts = make_postings(120, 0, with_rewards=True)
    assert len({p["id"] for p in posts}) == 120
    assert {p["style"] for p in posts} == {"agentic", "communal", "neutral"}
    assert len({p["region"] for p in posts}) >= 6 and {p["region"] for p in posts} <= set(REGIONS)
    assert len({p["seniority"] for p in posts}) == 4
    for p in posts:
        a = sum(s in p["text"] for s in AGENTIC)
        c = sum(s in p["text"] for s in COMMUNAL)
        if p["style"] == "agentic":
            assert a > c
        assert p["reward"] == -10.0 * abs(a - c)
        f = extract_fields(p["text"])
        assert (f["company"], f["location"], f["title"]) == (p["company"], p["location"], p["title"])


def test_candidates_gender_skew_in_wording():
    cands = make_candidates(400, 1)
    assert {c["gender"] for c in cands} == {"F", "M"}
    assert set(cands[0]) >= {"id", "text", "gender", "region", "profession"}

    def share(g, bank):
        sel = [c for c in cands if c["gender"] == g]
        return sum(any(s in c["text"] for s in bank) for c in sel) / len(sel)

    assert share("F", CANDIDATE_COMMUNAL) > 0.6 > share("M", CANDIDATE_COMMUNAL)
    assert share("M", CANDIDATE_AGENTIC) > 0.6 > share("F", CANDIDATE_AGENTIC)


def test_write_demo_files_load(tmp_path):
    paths = write_demo(tmp_path, n_postings=60, n_candidates=20, seed=2)
    tr, ev = JobsDataset.from_file(paths["train"]), JobsDataset.from_file(paths["eval"])
    assert len(tr) + len(ev) == 60 and len(ev) > 0 and len(tr) > len(ev)
    assert all(e.reward is not None for e in tr)
    cands = [json.loads(ln) for ln in open(paths["candidates"], encoding="utf-8")]
    assert len(cands) == 20 and all(c["gender"] in ("F", "M") for c in cands)
