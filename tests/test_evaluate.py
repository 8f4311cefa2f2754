"""evaluate.py: every prompt once in order, all fields, summary/report files, crash-resume keeps
finished rows byte-identical, non-run-dir checkpoints (HF dir), config errors."""
import json

import numpy as np
import pytest

from fairjax import evaluate as E
from fairjax.runs import load
from trainer_fixtures import load_config, set_dotted, small_config


@pytest.fixture(scope="module")
def ilql_run(tmp_path_factory):
    from fairjax.train.build import train

    run = tmp_path_factory.mktemp("ilql_run")
    cfg = small_config("ilql", **{"train.steps": 4})
    train(cfg, run)
    return run


def eval_config(checkpoint, out, **overrides):
    c = load_config("eval")
    c.unlock()
    c.checkpoint, c.output_dir = str(checkpoint), str(out)
    c.limit, c.batch_size, c.chunk_batches, c.n_boot = 6, 4, 1, 50
    c.generation.max_new_tokens = 8
    c.scorer.embedder = "tfidf"  # fast; tests/rewards/test_embedders.py covers the encoders
    c.variants = "bc:0,ilql:4"
    set_dotted(c, overrides)
    c.lock()
    return c


def test_rows_in_order_with_all_fields_and_resume(ilql_run, tmp_path):
    out = tmp_path / "ev"
    summary = E.evaluate(eval_config(ilql_run, out))
    log = out / E.LOG_FILE
    rows = [json.loads(l) for l in log.read_text().splitlines()]
    assert [r["index"] for r in rows] == list(range(6))
    assert len({r["id"] for r in rows}) == 6
    for r in rows:
        for name in ("original", "bc", "ilql"):
            assert {"text", "reward", "ir_female", "ir_male", "verdict", "has_pii",
                    "n_chars"} <= set(r[name])
        for name in ("bc", "ilql"):
            assert {"nll", "nll_original", "log_prob", "kl", "adv_sum", "finished",
                    "num_new_tokens"} <= set(r[name])
            assert 1 <= r[name]["num_new_tokens"] <= 8
        assert r["bc"]["adv_sum"] == 0.0 and r["ilql"]["adv_sum"] != 0.0
    assert set(summary["systems"]) == {"original", "bc", "ilql", "lexicon_swap", "inclusion_statement"}
    assert "vs_original" in summary["systems"]["ilql"]
    # the ILQL run trains on the (standardised) diversity reward it reports; β = 0 is its BC policy
    assert summary["trained_reward"]["scorer"] == "diversity"
    assert summary["trained_reward"]["normalize"] == "standardize"
    assert summary["trained_reward_by_system"]["bc"]["scorer"] == "none"
    assert summary["reported_reward"]["scorer"] == "diversity"
    for name in ("bc", "ilql"):
        s = summary["systems"][name]
        finished = [r[name]["finished"] for r in rows]
        assert s["finished_share"]["mean"] == pytest.approx(sum(finished) / len(finished))
        assert set(s["preservation"]) == {"cosine", "chrf", "skills_kept", "header_kept", "length_ratio"}
        ratios = [r[name]["length_ratio"] for r in rows]
        assert s["preservation"]["length_ratio"]["mean"] == pytest.approx(sum(ratios) / len(ratios))
        assert 0.0 <= s["prompt_truncated_share"] <= 1.0
        assert {"raw", "covariate", "binned"} <= set(s["reward_length_controlled"]["vs_original"])
    assert "vs_bc" in summary["systems"]["ilql"]["reward_length_controlled"]
    table = summary["systems"]["original"]["fairness"]["gender"]
    assert set(table["by_group"]) == {"female", "male"} and "ratio" in table
    san = summary["sanity"]
    assert {"shuffled_words", "generic_text", "first_half", "empty"} <= set(san)
    assert san["empty"]["unmatched_share"] == 1.0  # counted, not matched to the first candidates
    for k in ("shuffled_words", "generic_text", "first_half", "empty"):  # below every original
        assert san[k]["constrained"]["ci_high"] < san["original"]["constrained"]["ci_low"], k
    for name in ("bc", "ilql"):
        j = summary["systems"][name]["joint"]
        assert {"sim", "acc", "fl", "j", "retrieved", "masculine_words", "feminine_words",
                "delta_diversity", "retrieval_chance"} <= set(j)
        sims = [r[name]["cosine"] for r in rows]
        assert j["sim"]["mean"] == pytest.approx(sum(max(0.0, x) for x in sims) / len(sims), abs=1e-5)
        assert 0.0 <= j["j"]["mean"] <= j["sim"]["mean"] + 1e-9
        d = [r[name]["reward"] - r["original"]["reward"] for r in rows]
        assert j["delta_diversity"]["mean_diff"] == pytest.approx(sum(d) / len(d))
        assert 0.0 <= summary["systems"][name]["constrained_reward"]["faithful_share"] <= 1.0
        assert "unmatched_share" in summary["systems"][name]
    assert "US employment-law heuristic" in summary["four_fifths_note"]
    md = (out / E.REPORT_DIR / "report.md").read_text()
    assert md.index("Verdict:") < md.index("## Appendix") and "Trained reward:** diversity (standardize)" in md
    assert "### Examples" in md and "### Sanity" in md and "### Joint metrics" in md
    assert "| empty text |" in md and "constrained reward" in md
    assert (out / E.SUMMARY_FILE).is_file()
    for f in ("report.md", "report.json", "reward_distributions.png", "impact_ratios.png",
              "pareto.png"):
        assert (out / E.REPORT_DIR / f).is_file()
    page = (out / E.REPORT_DIR / "report.html").read_text()
    assert summary["report"]["html"] == str(out / E.REPORT_DIR / "report.html")
    assert "Verdict:" in page and 'src="data:image/png;base64,' in page and "<ins>" in page

    # crash: the last row half-written; the first 4 rows must survive byte-identical
    lines = log.read_bytes().splitlines(keepends=True)
    kept = b"".join(lines[:4])
    log.write_bytes(kept + lines[4][:25])
    E.evaluate(eval_config(ilql_run, out))
    again = log.read_bytes()
    assert again.startswith(kept)
    assert [json.loads(l)["index"] for l in again.splitlines()] == list(range(6))
    # a different eval set in the same output dir is refused, not mixed in
    bad = eval_config(ilql_run, out, **{"data.eval": str(ilql_run / "data" / "jobs_train.jsonl")})
    with pytest.raises(ValueError, match="does not match"):
        E.evaluate(bad)


def test_hf_dir_checkpoint_and_errors(fixtures_dir, ilql_run, tmp_path):
    cfg = eval_config(fixtures_dir / "gpt2_tiny" / "hf", tmp_path / "hf", limit=2,
                      **{"data.eval": str(ilql_run / "data" / "jobs_eval.jsonl"),
                         "variants": "gpt2", "baselines": "",
                         "fluency_model": str(fixtures_dir / "gpt2_tiny" / "hf")})
    s = E.evaluate(cfg)
    assert set(s["systems"]) == {"original", "gpt2"}
    # FL scores each text alone (no prompt), unlike the system's conditional NLL columns
    rows = [json.loads(l) for l in (tmp_path / "hf" / E.LOG_FILE).read_text().splitlines()]
    module, params, tok = load(str(fixtures_dir / "gpt2_tiny" / "hf"))
    for r in rows:
        for name in ("gpt2", "original"):
            want = E.text_nll(module, params, tok, [r[name]["text"]], module.config.max_positions, 1)[0]
            assert r[name]["fl_nll"] == pytest.approx(want, rel=1e-5)
    assert "FL under" in s["joint_note"] and 0.0 <= s["systems"]["gpt2"]["joint"]["fl"]["mean"] <= 1.0
    with pytest.raises(ValueError, match="NAME:ADV_WEIGHT"):
        E.parse_variants("a:b")
    with pytest.raises(ValueError, match="unique"):
        E.parse_variants("x:1,x:2")
    with pytest.raises(ValueError, match="NAME=PATH"):
        E.parse_named_paths("nopath")
    with pytest.raises(ValueError, match="data.eval"):
        E.evaluate(eval_config(fixtures_dir / "gpt2_tiny" / "hf", tmp_path / "x", variants="g"))


def test_max_new_tokens_from_data_and_context():
    assert E.choose_max_new_tokens(0, [10, 20, 30, 40], 1024, 50) == (26, "p50 of the eval postings' "
                                                                       "token lengths + </a>")
    n, why = E.choose_max_new_tokens(0, [300] * 5, 128)
    assert n == 64 and "capped to 64" in why  # half of the context stays for the prompt
    n, why = E.choose_max_new_tokens(128, [300], 128)
    assert n == 64 and "config value 128" in why
    assert E.choose_max_new_tokens(32, [300], 128) == (32, "config")


def test_length_percentile_sizes_each_systems_rewrites(fixtures_dir):
    """generation.max_new_tokens = 0: the evaluation sizes rewrites at the configured percentile of
    the eval postings' token lengths (+1 for `</a>`), per system, and leaves the rest of the
    context to the prompt."""
    from types import SimpleNamespace

    from fairjax.generate import GenerationConfig
    from fairjax.io.tokenizer import Tokenizer

    tok = Tokenizer.from_dir(fixtures_dir / "gpt2_tiny" / "hf")
    postings = [SimpleNamespace(response=" ".join(["a"] * n)) for n in range(1, 41)]
    assert [len(tok.encode_text(e.response)) for e in postings] == list(range(1, 41))
    policy = SimpleNamespace(model=SimpleNamespace(config=SimpleNamespace(max_positions=128)))

    def sized(percentile, max_prompt_tokens=0):
        c = load_config("eval")
        c.unlock()
        c.generation.max_new_tokens, c.generation.length_percentile = 0, percentile
        c.max_prompt_tokens = max_prompt_tokens
        systems = [E.System(n, policy, tok, GenerationConfig(max_new_tokens=1), None, "test")
                   for n in ("bc", "ilql")]
        info = E._size_generation(c, systems, postings)
        assert [s.generation.max_new_tokens for s in systems] == [info[n]["max_new_tokens"]
                                                                   for n in ("bc", "ilql")]
        return info["ilql"]

    # lengths 1..40: p95 = 38.05 -> 39 (+1), p50 = 20.5 -> 21 (+1), p100 = 40 (+1)
    assert sized(95.0) == {"max_new_tokens": 40, "prompt_limit": 88, "max_new_tokens_reason":
                           "p95 of the eval postings' token lengths + </a>"}
    assert sized(50.0)["max_new_tokens"] == 22 and sized(50.0)["prompt_limit"] == 106
    assert sized(100.0)["max_new_tokens"] == 41
    assert sized(50.0, max_prompt_tokens=32)["prompt_limit"] == 32


def test_default_generation_fits_the_demo_context(ilql_run, tmp_path):
    """With the defaults (max_new_tokens from the data) the demo run evaluates instead of failing
    with "max_new_tokens=128 leaves no room for a prompt in 128 positions"."""
    s = E.evaluate(eval_config(ilql_run, tmp_path / "d", limit=2, variants="bc:0",
                               **{"generation.max_new_tokens": 0}))
    g = s["generation"]["bc"]
    assert 1 <= g["max_new_tokens"] <= 64 and g["prompt_limit"] >= 64


def test_baselines_are_systems_with_the_same_metrics(fixtures_dir, ilql_run, tmp_path):
    from fairjax.rewriters import InclusionStatement, LexiconSwap

    out = tmp_path / "base"
    cfg = eval_config(ilql_run, out, limit=4, variants="bc:0",
                      baselines="lexicon_swap,inclusion_statement,prompted,best_of_n",
                      **{"prompted.model": str(fixtures_dir / "gpt2_tiny" / "hf"),
                         "prompted.max_new_tokens": 6, "best_of_n.n": 2, "best_of_n.tau": 0.0,
                         "best_of_n.require_header": False})
    summary = E.evaluate(cfg)
    names = ("lexicon_swap", "inclusion_statement", "prompted", "best_of_n")
    assert set(summary["systems"]) == {"original", "bc", *names}
    keys = set(summary["systems"]["bc"])
    for n in names:  # scored the same way as the trained policy
        assert set(summary["systems"][n]) == keys, n
        assert summary["trained_reward_by_system"][n]["scorer"] == "baseline"
    rows = [json.loads(l) for l in (out / E.LOG_FILE).read_text().splitlines()]
    for r in rows:
        o = r["original"]["text"]
        assert r["lexicon_swap"]["text"] == LexiconSwap().rewrite([o])[0]
        assert r["inclusion_statement"]["text"] == InclusionStatement().rewrite([o])[0]
        bon = r["best_of_n"]
        assert bon["faithful"] == (bon["n_faithful"] > 0) and bon["n_faithful"] <= 2
        assert np.isfinite(bon["candidate_reward"])
        assert 1 <= r["prompted"]["num_new_tokens"] <= 6
    b = summary["baselines"]
    assert b["best_of_n"]["n"] == 2 and "training reward" in b["best_of_n"]["reward"]
    assert b["prompted"]["instruction"].startswith("Rewrite the job posting")
    assert b["prompted"]["generation"]["temperature"] == 0.7
    with pytest.raises(ValueError, match="baselines"):
        E.parse_baselines("lexicon_swap,nope")


def test_eval_skips_are_reported_and_real_data_needs_a_pool(ilql_run, tmp_path):
    """data.on_error=skip drops bad eval records and says how many (log line, summary.json);
    eval data without a candidate pool beside it (not the demo corpus) is refused instead of
    being scored against a synthetic pool."""
    lines = (ilql_run / "data" / "jobs_eval.jsonl").read_text().splitlines()
    data = tmp_path / "postings.jsonl"
    data.write_text("\n".join(lines[:3] + ['{"id": "bad", "text": 3}', "{not json"]) + "\n")
    cfg = eval_config(ilql_run, tmp_path / "a", limit=2, variants="bc:0",
                      **{"data.eval": str(data), "data.on_error": "skip"})
    with pytest.raises(ValueError, match="scorer.pools is empty"):
        E.evaluate(cfg)
    cfg = eval_config(ilql_run, tmp_path / "b", limit=2, variants="bc:0",
                      **{"data.eval": str(data), "data.on_error": "skip",
                         "scorer.pools": str(ilql_run / "data" / "candidates.jsonl")})
    s = E.evaluate(cfg)
    assert (s["eval_read"]["kept"], s["eval_read"]["skipped"]) == (3, 2)
    assert s["eval_read"]["errors"][0].startswith(f"{data}:4")
    assert "3 records kept, 2 skipped" in E.format_summary(s)
    assert json.loads((tmp_path / "b" / E.SUMMARY_FILE).read_text())["eval_read"]["skipped"] == 2
    # the headline is the mean of the per-row log, and vs_original the mean paired difference
    rows = [json.loads(l) for l in (tmp_path / "b" / E.LOG_FILE).read_text().splitlines()]
    for name in ("original", "bc"):
        want = sum(r[name]["reward"] for r in rows) / len(rows)
        assert s["systems"][name]["reward"]["mean"] == pytest.approx(want)
    diff = sum(r["bc"]["reward"] - r["original"]["reward"] for r in rows) / len(rows)
    assert s["systems"]["bc"]["vs_original"]["reward"]["mean_diff"] == pytest.approx(diff)


def test_text_nll_is_the_unpadded_per_token_nll_in_input_order(fixtures_dir):
    """Batched, length-sorted and padded = one text at a time by hand; order kept; a text of
    fewer than two tokens has no NLL."""
    import jax

    module, params, tok = load(str(fixtures_dir / "gpt2_tiny" / "hf"))
    texts = ["Senior engineer, Berlin. We build data tools and value clear writing.", "x",
             "Backend developer (remote). Python and Postgres.", "",
             "Ninja rockstar wanted. " * 60]  # longer than the context: cut to it
    n_pos = module.config.max_positions
    assert len(tok.encode_text(texts[-1])) > n_pos
    got = E.text_nll(module, params, tok, texts, n_pos, batch_size=2)
    for text, g in zip(texts, got):
        ids = np.asarray(tok.encode_text(text)[:n_pos], np.int32)
        if len(ids) < 2:
            assert np.isnan(g)
            continue
        logits = module.apply({"params": params}, ids[None], np.ones((1, len(ids)), np.int32)).logits[0]
        logp = np.asarray(jax.nn.log_softmax(logits[:-1], -1))
        want = -logp[np.arange(len(ids) - 1), ids[1:]].mean()
        assert g == pytest.approx(float(want), rel=1e-5)
    memo = E.load_fluency_model(str(fixtures_dir / "gpt2_tiny" / "hf"), batch_size=2)
    np.testing.assert_allclose(memo(texts[::-1]), got[::-1], rtol=1e-5)


def test_baselines_alone_need_no_checkpoint(fixtures_dir, ilql_run, tmp_path):
    data = str(ilql_run / "data" / "jobs_eval.jsonl")
    hf = str(fixtures_dir / "gpt2_tiny" / "hf")
    s = E.evaluate(eval_config("", tmp_path / "b", limit=4, variants="", fluency_model=hf,
                               baselines="lexicon_swap,inclusion_statement", **{"data.eval": data}))
    assert set(s["systems"]) == {"original", "lexicon_swap", "inclusion_statement"}
    rows = [json.loads(l) for l in (tmp_path / "b" / E.LOG_FILE).read_text().splitlines()]
    assert len(rows) == 4 and all("fl_nll" in r["inclusion_statement"] and
                                  r["inclusion_statement"]["nll"] is None for r in rows)
    j = s["systems"]["inclusion_statement"]["joint"]
    assert 0.0 <= j["j"]["mean"] <= 1.0 and j["fl"]["n"] == 4
    with pytest.raises(ValueError, match="fluency_model"):
        E.evaluate(eval_config("", tmp_path / "c", variants="", **{"data.eval": data}))
    with pytest.raises(ValueError, match="best_of_n"):
        E.evaluate(eval_config("", tmp_path / "d", variants="", fluency_model=hf,
                               baselines="best_of_n", **{"data.eval": data}))


def test_the_scorer_block_is_typed_once_and_checked():
    """config.scorer as an evaluate.ScorerConfig: values checked by the reward modules, keys named."""
    from fairjax.errors import ConfigError

    s = E.scorer_config(load_config("eval").scorer)
    assert s.pools == () and s.embedder == "all-minilm-l6-v2" and s.constrained_tau == 0.9765
    assert s.diversity().scorer_config().k == s.k
    assert E.scorer_config({"pools": "a.jsonl, b.jsonl"}).pools == ("a.jsonl", "b.jsonl")
    assert E.scorer_config({}).embedder == "tfidf"  # a block without the key
    with pytest.raises(ConfigError, match=r"^config.scorer.top_k: unknown field"):
        E.scorer_config({"top_k": 3})
    with pytest.raises(ConfigError, match=r"config.scorer: distance='l1'; expected one of"):
        E.scorer_config({"distance": "l1"})
    with pytest.raises(ConfigError, match=r"config.scorer: constrained_tau: tau=2"):
        E.scorer_config({"constrained_tau": 2})
