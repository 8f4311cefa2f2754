"""Evaluation config: `python -m fairjax.evaluate --config=configs/eval.py --config.checkpoint=RUN`.

Generates a rewrite of every eval posting (once, in order) with each system, scores original and
rewrites, writes OUTPUT_DIR/{eval_logs.jsonl, summary.json, report/}. Resumable (re-run = continue).
"""
from ml_collections import ConfigDict


def get_config():
    c = ConfigDict()
    # What to evaluate: a fairjax run dir (BC, ILQL, A-LoL, ...), a fairjax model dir, a Hugging
    # Face dir / cached id, or an FMs-at-work .pkl (then `base` gives config + tokenizer).
    c.checkpoint = "runs/ilql"
    c.base = ""
    c.step = "best"  # run-dir checkpoint: best (lowest eval loss) | latest | a step number
    # Named decoding variants of `checkpoint`, "NAME:ADV_WEIGHT,...". For an ILQL run dir a
    # positive ADV_WEIGHT (the beta of pi_beta + beta(Q - V), paper: 8) decodes with the three
    # trunks; 0 samples the policy trunk alone (the BC policy when awac_weight = 0). Other
    # checkpoints use the first name.
    c.variants = "bc:0,ilql_b1:1,ilql_b8:8"
    # More systems, each sampled plainly: "NAME=PATH,..." (e.g. "alol=runs/study/alol").
    c.extra_checkpoints = ""
    c.output_dir = "runs/eval"
    c.seed = 0
    c.limit = 0  # evaluate only the first N postings (0 = all)
    c.batch_size = 16  # prompts per generation batch
    c.chunk_batches = 4  # generation batches per appended block of eval_logs.jsonl rows
    c.max_prompt_tokens = 0  # trim prompts to this many tokens (0 = what fits the model)
    c.n_boot = 1000  # bootstrap resamples for the CIs

    c.data = ConfigDict()
    c.data.eval = ""  # eval postings JSONL/CSV ("" = the checkpoint run's eval split)
    c.data.text_field = "text"
    c.data.on_error = "raise"  # bad record: raise (file:line) | skip

    c.generation = ConfigDict()
    # Per rewrite, </a> included (upstream 256). 0 = from the data: the `length_percentile`
    # percentile of the eval postings' token lengths + 1. Any value is capped so that half of the
    # model's context stays for the prompt (summary.json says which value was used and why).
    c.generation.max_new_tokens = 0
    c.generation.length_percentile = 95.0
    c.generation.mode = "sample"  # sample | greedy | beam
    c.generation.temperature = 1.0
    c.generation.top_k = 0  # 0 = off
    c.generation.top_p = 1.0  # 1.0 = off
    c.generation.num_beams = 1
    c.generation.num_generations = 1  # best-of-n by summed advantage (upstream rerank weights)
    c.generation.exp_adv = True  # beta * A (True) or the step-function log-weights
    c.generation.adv_clip = 0.0  # upper clip of the perturbation (0 = off)

    c.scorer = ConfigDict()
    # Candidate pools, comma-separated JSONL ("" = the candidates.jsonl beside the eval data,
    # which only the demo corpus has; other data without pools is refused). Real data:
    # "../shared/data/bios/bios.jsonl,../shared/data/tech_bios/bios.jsonl"
    c.scorer.pools = ""
    c.scorer.k = 50  # candidates matched per posting (the impact-ratio pool)
    c.scorer.select_k = 10  # selected candidates per posting
    c.scorer.distance = "signed_tv"  # share distance: signed_tv | paper
    c.scorer.gender_target = "uniform"  # uniform | pool
    c.scorer.region_target = "pool"  # uniform | pool
    c.scorer.n_features = 4096  # hashing TF-IDF embedder dimension
    c.scorer.cache_dir = ""  # pool-embedding cache ("" = none)
    c.lock()
    return c
