"""Evaluation config: `python -m fairjax.evaluate --config=configs/eval.py --config.checkpoint=RUN`.

Generates a rewrite of every eval posting (once, in order) with each system, scores original and
rewrites, writes OUTPUT_DIR/{eval_logs.jsonl, summary.json, report/}. Resumable (re-run = continue).
"""
from ml_collections import ConfigDict


def get_config():
    c = ConfigDict()
    # What to evaluate: a fairjax run dir (BC, ILQL, A-LoL, ...), a fairjax model dir, a Hugging
    # Face dir / cached id, or an FMs-at-work .pkl (then `base` gives config + tokenizer); "" with
    # `baselines` set evaluates the baselines alone (no NLL columns; give data.eval).
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
    # Baselines beside the checkpoint (fairjax.systems; docs/evaluation.md "Baselines"), comma-
    # separated: lexicon_swap (masculine-coded words swapped for neutral ones), inclusion_statement
    # (the swap + one fixed inclusion/benefits sentence), prompted (an instruct model zero-shot,
    # `prompted.*`), best_of_n (`best_of_n.n` samples of a policy, the best faithful one under its
    # training reward). Their nll columns are under the checkpoint's LM.
    c.baselines = "lexicon_swap,inclusion_statement"
    c.prompted = ConfigDict()
    c.prompted.model = "smollm2-135m-instruct"  # preset, HF dir, fairjax model or run dir
    c.prompted.instruction = ""  # "" = fairjax.systems.INSTRUCTION
    c.prompted.temperature = 0.7
    c.prompted.top_p = 0.9
    c.prompted.top_k = 0
    c.prompted.max_new_tokens = 0  # 0 = p95 of the postings' token lengths + 16 (half the context at most)
    c.prompted.batch_size = 8
    c.best_of_n = ConfigDict()
    c.best_of_n.policy = ""  # "" = the checkpoint (its first variant); or a run/model dir
    c.best_of_n.n = 4  # samples per prompt
    c.best_of_n.temperature = 1.0
    # faithful = cosine to the original under the scorer's embedder >= tau and every header field
    # (company, title, location, remote) kept; the best faithful sample by the training reward wins
    c.best_of_n.tau = 0.9765  # = reward.constrained.tau (configs/common.py, MiniLM)
    c.best_of_n.require_header = True
    c.output_dir = "runs/eval"
    c.seed = 0
    c.limit = 0  # evaluate only the first N postings (0 = all)
    c.batch_size = 16  # prompts per generation batch
    c.chunk_batches = 4  # generation batches per appended block of eval_logs.jsonl rows
    c.max_prompt_tokens = 0  # trim prompts to this many tokens (0 = what fits the model)
    c.n_boot = 1000  # bootstrap resamples for the CIs
    # Language model of the fluency FL = min(1, exp(nll(original) - nll(rewrite))) in the joint
    # metrics (docs/evaluation.md): "" = each system's own per-token NLL columns; a model path or
    # preset (e.g. "smollm2-135m-instruct": the pretrained base, loaded with fairjax.runs.load)
    # scores every system's rewrites and the originals with that one model.
    c.fluency_model = ""
    # Per-system NLL columns (`nll`, `nll_original`: the rewrite and the original as a response to
    # the prompt under the checkpoint's LM). One forward pass of prompt + text per system and
    # posting; False skips them (FL then needs fluency_model).
    c.nll_columns = True

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

    c.scorer = ConfigDict()  # read once as a typed `fairjax.evaluate.ScorerConfig`
    # Candidate pools, comma-separated JSONL ("" = the candidates.jsonl beside the eval data,
    # which only the demo corpus has; other data without pools is refused). Real data:
    # "../shared/data/bios/bios.jsonl,../shared/data/tech_bios/bios.jsonl"
    c.scorer.pools = ""
    c.scorer.k = 50  # candidates matched per posting (the impact-ratio pool)
    c.scorer.select_k = 10  # selected candidates per posting
    c.scorer.distance = "signed_tv"  # share distance: signed_tv | paper
    c.scorer.gender_target = "uniform"  # uniform | pool
    c.scorer.region_target = "pool"  # uniform | pool
    # Embedder of the matching and the preservation cosine, as reward.embedder (configs/common.py):
    # all-minilm-l6-v2 | all-mpnet-base-v2 | tfidf (hashing TF-IDF) | bert-cls:DIR | a directory
    c.scorer.embedder = "all-minilm-l6-v2"
    c.scorer.n_features = 4096  # hashing TF-IDF embedder dimension (scorer.embedder=tfidf)
    c.scorer.cache_dir = ""  # pool-embedding cache ("" = none)
    # similarity threshold of the constrained (faithful-rewrite) reward shown per system and in the
    # sanity rows: configs/common.py reward.constrained.tau (calibrated for the default embedder)
    c.scorer.constrained_tau = 0.9765  # MiniLM; 0.9588 under scorer.embedder=tfidf
    c.lock()
    return c
