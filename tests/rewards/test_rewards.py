"""Embedders, candidate pools, the diversity reward, lexicon, PII and reward precomputation."""
import json
import sys

import numpy as np
import pytest

from fairjax.eval import fairness
from fairjax.rewards import (CandidatePool, DiversityConfig, DiversityScorer, GenderCodedScorer,
                             HashingTfidfEmbedder, PiiScorer, PoolFormatError, Scorer, code_text,
                             find_pii, load_pool, precompute_rewards)
from fairjax.rewards.lexicon import verdict
from fairjax.rewards.pool import infer_region
from fairjax.rewards.precompute import annotate_jsonl


# --------------------------------------------------------------------------- embedders
def test_hashing_embedder_basics(tmp_path):
    corpus = ["python backend engineer", "nurse at a hospital", "senior python engineer remote",
              "accountant with cpa"]
    e = HashingTfidfEmbedder(n_features=4096).fit(corpus)
    x = e.embed(corpus + [""])
    assert x.shape == (5, 4096) and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x[:4], axis=1), 1.0, atol=1e-6)
    assert not x[4].any()  # no tokens -> zero row
    sim = x @ x.T
    assert sim[0, 2] > sim[0, 1] and sim[0, 2] > sim[0, 3]
    # deterministic across instances; save/load keeps the idf and the id
    path = tmp_path / "emb.npz"
    e.save(path)
    e2 = HashingTfidfEmbedder.load(path)
    assert e2.id == e.id
    np.testing.assert_array_equal(e2.embed(corpus), x[:4])
    np.testing.assert_array_equal(HashingTfidfEmbedder(n_features=4096).fit(corpus).embed(corpus), x[:4])
    # fit_embed == fit + embed; idf changes vectors (and the id)
    np.testing.assert_allclose(HashingTfidfEmbedder(n_features=4096).fit_embed(corpus), x[:4], atol=1e-6)
    assert HashingTfidfEmbedder(n_features=4096).id != e.id
    # char n-grams: a typo still overlaps
    c = HashingTfidfEmbedder(n_features=512, word_ngrams=(1, 1), char_ngrams=(3, 4))
    v = c.embed(["engineering", "engineerring", "accounting"])
    assert v[0] @ v[1] > v[0] @ v[2]
    with pytest.raises(ValueError, match="not a saved"):
        (tmp_path / "junk.npz").write_bytes(b"junk")
        HashingTfidfEmbedder.load(tmp_path / "junk.npz")
    with pytest.raises(ValueError, match="word_ngrams"):
        HashingTfidfEmbedder(word_ngrams=(1, 3))


# --------------------------------------------------------------------------- pools
def _write(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_real_pools_load_as_they_are(shared_data_dir):
    bios = load_pool(shared_data_dir / "bios" / "bios.jsonl", limit=200)
    assert set(bios.gender) <= {"female", "male"} and bios.region is None
    assert bios.profession is not None and len(bios) == 200
    tech = shared_data_dir / "tech_bios" / "bios.jsonl"
    if tech.is_file():
        assert set(load_pool(tech, limit=100).gender) <= {"female", "male"}
    hn = load_pool(shared_data_dir / "hn_candidates" / "candidates.jsonl")
    assert hn.gender is None and hn.region is not None and hn.location is not None
    assert (hn.region != "unknown").mean() > 0.5  # regions come from the "Location:" lines
    both = CandidatePool.concat([bios, hn])
    assert len(both) == len(bios) + len(hn)
    assert (both.gender[len(bios):] == "").all() and (both.region[: len(bios)] == "").all()


@pytest.mark.parametrize("lines,match", [
    (['{"text": "a", "gender": "F"}', '{"text": "b", "gender": "F"'], r"pool.jsonl:2: invalid JSON"),
    (['["not", "an", "object"]'], r"pool.jsonl:1: expected a JSON object"),
    (['{"text": "a", "gender": "F"}', '{"gender": "M"}'], r"pool.jsonl:2: missing or empty text"),
    (['{"text": "a", "gender": "F"}', '{"text": "  ", "gender": "M"}'], r"pool.jsonl:2: missing or empty"),
    (['{"text": "a", "gender": "F"}', '{"text": "b"}'], r"pool.jsonl:2: field 'gender' is missing"),
    (['{"text": "a", "gender": "F"}', '{"text": "b", "gender": "X"}'], r"pool.jsonl:2: gender 'X'"),
    (['{"text": "a", "gender": 1}'], r"pool.jsonl:1: 'gender' must be a non-empty string"),
    (['{"text": "a", "region": "mars"}'], r"pool.jsonl:1: region 'mars'"),
    (['', '  '], r"pool.jsonl: the candidate pool is empty"),
])
def test_pool_bad_inputs(tmp_path, lines, match):
    with pytest.raises(PoolFormatError, match=match):
        load_pool(_write(tmp_path / "pool.jsonl", lines))


def test_pool_missing_file_and_aliases(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_pool(tmp_path / "nope.jsonl")
    p = _write(tmp_path / "pool.jsonl", ['{"text": "a", "sex": "w", "region": "North America"}'])
    from fairjax.rewards import PoolFields
    pool = load_pool(p, PoolFields(gender="sex"), gender_aliases={"w": "female", "m": "male"})
    assert pool.gender.tolist() == ["female"] and pool.region.tolist() == ["north_america"]


def test_infer_region():
    assert infer_region("Geelong/Surf Coast (Near Melbourne, Australia)") == "australia"
    assert infer_region("Remote or Berlin") == "europe"
    assert infer_region("Remote") == "remote"
    assert infer_region("Zurich, Switzerland") == "europe"
    assert infer_region("Srinagar, J&K, India") == "asia"
    assert infer_region("the moon") == "unknown" and infer_region(None) == "unknown"


class _TableEmbedder:
    """Embedder with fixed vectors per text (for closed-form diversity checks)."""

    def __init__(self, table):
        self.table = {k: np.asarray(v, np.float32) / np.linalg.norm(v) for k, v in table.items()}
        self.id = "table-" + str(len(table))
        self.calls = 0

    def embed(self, texts):
        self.calls += 1
        return np.stack([self.table[t] for t in texts])


def _toy_pool():
    # candidate c_i points at angle i; the job "j" is closest to c0, then c1, ...
    angles = np.linspace(0.0, 1.2, 6)
    table = {f"c{i}": [np.cos(a), np.sin(a)] for i, a in enumerate(angles)}
    table["j"] = [1.0, 0.0]
    table["j_rev"] = [np.cos(1.2), np.sin(1.2)]
    pool = CandidatePool(texts=[f"c{i}" for i in range(6)], ids=[str(i) for i in range(6)],
                         gender=np.array(["female", "female", "female", "male", "male", "male"], object),
                         profession=np.array(["nurse", "nurse", "dev", "dev", "dev", "nurse"], object),
                         location=["Berlin, Germany", "London", "New York", "Berlin", None, "Paris"])
    return pool, _TableEmbedder(table)


def test_diversity_closed_form_paper_vs_tv():
    pool, emb = _toy_pool()
    tv = DiversityScorer(pool, emb, DiversityConfig(k=4, select_k=2))
    paper = DiversityScorer(pool, emb, DiversityConfig(k=4, select_k=2, distance="paper"))
    assert isinstance(tv, Scorer) and tv.attrs == ["gender"]
    r = tv.evaluate(["j", "j_rev"])
    # j: top4 = c0..c3 -> F 3/4; j_rev: top4 = c5..c2 -> F 1/4, M 3/4
    np.testing.assert_allclose(r.shares["gender"], [[0.75, 0.25], [0.25, 0.75]])
    np.testing.assert_allclose(r.reward, [-25.0, -25.0])  # TV vs 50/50 = 0.25 each
    np.testing.assert_allclose(paper.score_texts(["j", "j_rev"]), [-25.0, -25.0])
    # selected = top 2: j -> {c0, c1} F 2/3, M 0/1
    assert r.rates["gender"]["sr_female"][0] == pytest.approx(2 / 3)
    assert r.rates["gender"]["ir_male"][0] == 0.0
    # against a non-symmetric target, paper is label-blind and TV is not
    pool_tgt = DiversityConfig(k=4, select_k=2, gender_target="pool")  # pool = 50/50 here
    assert DiversityScorer(pool, emb, pool_tgt).score_texts(["j"])[0] == pytest.approx(-25.0)
    occ = DiversityScorer(pool, emb, DiversityConfig(k=4, select_k=2, gender_target="occupation"))
    res = occ.evaluate(["j", "j_rev"], occupations=["nurse", "Dev"])
    np.testing.assert_allclose(res.targets["gender"], [[2 / 3, 1 / 3], [1 / 3, 2 / 3]])
    np.testing.assert_allclose(res.distance["gender"], [0.75 - 2 / 3, 0.75 - 2 / 3])
    occ_paper = DiversityScorer(pool, emb, DiversityConfig(k=4, select_k=2, gender_target="occupation",
                                                           distance="paper"))
    swapped = occ_paper.evaluate(["j"], occupations=["dev"])  # realised 75/25 vs target 33/67
    assert swapped.distance["gender"][0] == pytest.approx(abs(0.25 - 1 / 3))  # label-blind
    assert occ.evaluate(["j"], occupations=["dev"]).distance["gender"][0] == pytest.approx(0.75 - 1 / 3)
    with pytest.raises(ValueError, match="occupation 'pilot'"):
        occ.evaluate(["j"], occupations=["pilot"])


def test_diversity_location_filter_and_no_match():
    pool, emb = _toy_pool()
    sc = DiversityScorer(pool, emb, DiversityConfig(k=4, select_k=2, location_filter=True))
    r = sc.evaluate(["j", "j", "j"], locations=["Berlin and London", "Mars", "new york, berlin"])
    np.testing.assert_array_equal(r.n_matched, [3, 0, 3])  # {c0,c1,c3}, {}, {c0,c2,c3}
    np.testing.assert_allclose(r.shares["gender"][0], [2 / 3, 1 / 3])
    assert r.reward[1] == -100.0 and np.isnan(r.shares["gender"][1]).all()
    assert np.isnan(r.rates["gender"]["ir_female"][1])
    with pytest.raises(ValueError, match="locations"):
        sc.score_texts(["j"])
    with pytest.raises(ValueError, match="one location per text"):
        sc.evaluate(["j"])


def test_diversity_bad_config_and_pool():
    pool, emb = _toy_pool()
    with pytest.raises(ValueError, match="distance"):
        DiversityConfig(distance="emd")
    with pytest.raises(ValueError, match="select_k"):
        DiversityConfig(k=5, select_k=6)
    with pytest.raises(ValueError, match="gender_target"):
        DiversityConfig(gender_target="census")
    nolabel = CandidatePool(texts=pool.texts, ids=pool.ids)
    with pytest.raises(ValueError, match="labels none of"):
        DiversityScorer(nolabel, emb)
    with pytest.raises(ValueError, match="candidate locations"):
        DiversityScorer(CandidatePool(texts=pool.texts, ids=pool.ids, gender=pool.gender), emb,
                        DiversityConfig(k=2, select_k=1, location_filter=True)).evaluate(["j"], ["x"])


def test_diversity_matches_bruteforce_and_pool_cache(tmp_path):
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(60)]
    texts = [" ".join(rng.choice(words, 12)) for _ in range(40)]
    cands = [" ".join(rng.choice(words, 12)) for _ in range(300)]
    gender = rng.choice(["female", "male"], 300).astype(object)
    region = rng.choice(["europe", "asia", "north_america"], 300).astype(object)
    pool = CandidatePool(texts=cands, ids=[str(i) for i in range(300)], gender=gender, region=region)
    emb = HashingTfidfEmbedder(n_features=128)
    sc = DiversityScorer(pool, emb, DiversityConfig(k=20, select_k=5, chunk_size=7), cache_dir=tmp_path)
    r = sc.evaluate(texts)
    sim = emb.embed(texts) @ emb.embed(cands).T
    for a, labels in (("gender", gender), ("region", region)):
        ref = fairness.impact_ratios(sim, labels, pool_k=20, select_k=5, group_names=sc.names[a])
        for k, v in ref.items():
            np.testing.assert_allclose(r.rates[a][k], v, atol=1e-12)
    order = np.argsort(-sim, axis=1, kind="stable")[:, :20]
    fem = (gender[order] == "female").mean(axis=1)
    np.testing.assert_allclose(r.shares["gender"][:, 0], fem)
    reg_t = np.array([(region == g).mean() for g in sc.names["region"]])
    reg_s = np.stack([(region[order] == g).mean(axis=1) for g in sc.names["region"]], axis=1)
    want = -100 * (np.abs(fem - 0.5) + 0.5 * np.abs(reg_s - reg_t).sum(axis=1))
    np.testing.assert_allclose(r.reward, want, atol=1e-9)
    # pool embeddings are cached on disk: a second scorer reads them back without embedding
    assert len(list(tmp_path.glob("pool-*.npz"))) == 1

    class Counting(HashingTfidfEmbedder):
        calls = 0

        def embed(self, t):
            Counting.calls += 1
            return super().embed(t)
    e2 = Counting(n_features=128)
    e2.idf = emb.idf
    DiversityScorer(pool, e2, DiversityConfig(k=20, select_k=5), cache_dir=tmp_path)
    assert Counting.calls == 0


# --------------------------------------------------------------------------- lexicon / pii
def test_gender_coded_lexicon():
    c = code_text("An aggressive, competitive leader who is self-reliant; supportive and responsible.")
    assert c.masculine_words == ("aggressive", "competitive", "leader", "self-reliant")
    assert c.feminine_words == ("supportive", "responsible")
    assert c.coded_ratio == pytest.approx(2 / 6) and c.verdict == "slightly masculine-coded"
    assert code_text("The office has plants.").verdict == "neutral"
    assert verdict(0, 4) == "strongly feminine-coded" and verdict(4, 1) == "slightly masculine-coded"
    assert verdict(5, 0) == "strongly masculine-coded" and verdict(1, 3) == "slightly feminine-coded"
    assert code_text("kindness").feminine == 0 and code_text("kind").feminine == 1  # exact word
    s = GenderCodedScorer().score_texts(["leader", "warm and kind", "desk"])
    np.testing.assert_allclose(s, [1.0, -1.0, 0.0])
    np.testing.assert_allclose(GenderCodedScorer("difference").score_texts(["lead lead warm"]), [1.0])
    with pytest.raises(ValueError, match="mode"):
        GenderCodedScorer("sum")


def test_pii_detection():
    r = find_pii("Contact: Jane Doe at jane.doe@acme.com or +1 (415) 555-0133. See https://acme.com/jobs.")
    assert r.counts == {"email": 1, "phone": 1, "url": 1, "name": 1}
    spans = {k: "Contact: Jane Doe at jane.doe@acme.com or +1 (415) 555-0133. See https://acme.com/jobs."[s:e]
             for s, e, k in r.spans}
    assert spans == {"name": "Jane Doe", "email": "jane.doe@acme.com", "phone": "+1 (415) 555-0133",
                     "url": "https://acme.com/jobs"}
    r = find_pii("Salary $120,000 - 150,000; founded 2017-2020; 401k.\n— John")
    assert r.counts["phone"] == 0 and r.counts["name"] == 1
    assert find_pii("email jobs [at] foo [dot] com, Contact Us").counts == {"email": 1, "phone": 0,
                                                                           "url": 0, "name": 0}
    assert find_pii("").pii_per_char == 0.0
    # bullets, role words and cue words inside other words are not names
    assert find_pii("Stack:\n- Spark\n- Kafka\nWe are developing Golang tools. Email Marketer wanted. "
                    "Contact: Please apply").counts["name"] == 0
    assert find_pii("Best,\nJames").counts["name"] == 1
    s = PiiScorer().score_texts(["no contact data here", "mail a@b.io"])
    assert s[0] == 0.0 and s[1] == pytest.approx(6 / 11)


# --------------------------------------------------------------------------- precompute
class _CountingScorer:
    name = "len"

    def __init__(self):
        self.seen = []

    def score_texts(self, texts):
        self.seen += list(texts)
        return np.array([len(t) for t in texts], np.float64)


def test_precompute_cache_hits(tmp_path):
    cache = tmp_path / "rewards.jsonl"
    s = _CountingScorer()
    out = precompute_rewards(["a", "bb", "a"], s, cache, batch_size=1, progress=False)
    np.testing.assert_array_equal(out, [1, 2, 1])
    assert s.seen == ["a", "bb"]
    s2 = _CountingScorer()
    np.testing.assert_array_equal(precompute_rewards(["bb", "ccc"], s2, cache, progress=False), [2, 3])
    assert s2.seen == ["ccc"]  # only the new text was scored
    with open(cache, "a") as f:
        f.write("{bad\n")
    with pytest.raises(ValueError, match=r"rewards.jsonl:4: bad reward-cache line"):
        precompute_rewards(["a"], s2, cache, progress=False)


def test_annotate_jsonl(tmp_path):
    src = _write(tmp_path / "d.jsonl", ['{"text": "ab", "id": 1}', '', '{"text": "c"}'])
    n = annotate_jsonl(src, tmp_path / "o.jsonl", _CountingScorer(), progress=False)
    rows = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert n == 2 and [r["reward"] for r in rows] == [2.0, 1.0] and rows[0]["id"] == 1
    _write(tmp_path / "bad.jsonl", ['{"text": "ab"}', '{"txt": "c"}'])
    with pytest.raises(ValueError, match=r"bad.jsonl:2: expected an object with a string 'text'"):
        annotate_jsonl(tmp_path / "bad.jsonl", tmp_path / "o2.jsonl", _CountingScorer(), progress=False)
    with pytest.raises(ValueError, match="overwrite"):
        annotate_jsonl(src, src, _CountingScorer(), progress=False)


def test_rewards_import_has_no_jax():
    import subprocess
    code = ("import sys; sys.modules['jax'] = None; sys.modules['flax'] = None; "
            "import fairjax.rewards, fairjax.rewards.diversity; print('ok')")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-2000:]
