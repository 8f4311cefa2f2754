"""Grow -> improve (ReST, Gulcehre et al. 2023): `python -m fairjax.rest --config=configs/rest.py`.

Each of `rest.rounds` rounds samples `rest.k` rewrites of every train posting with the current
policy (round 0: `rest.initial`; later rounds: the previous round's trained policy), scores them
with the training reward (`reward.*`), and trains the offline objective of this config (PHF
filtering by default: fine-tune on the responses whose normalised reward is >= phf.threshold) on
the originals plus the rewrites, starting from the previous round's policy. Run dir layout:
RUN_DIR/round_<r>/data/{augmented,scored,pairs}.jsonl + stats.json (the round's data and reward
statistics), RUN_DIR/round_<r>/train/ (the round's training run), RUN_DIR/rest_summary.json.
"""
from fairjax.config_files import sibling

_phf = sibling("phf", __file__)
ConfigDict = _phf.common.ConfigDict


def get_config():
    c = _phf.get_config()
    c.unlock()
    c.run_dir = "runs/rest"
    c.phf.objective = "filtering"  # ReST's improve step: fine-tune on the better half
    c.phf.threshold = 0.0  # standardised reward >= 0: above the round's mean
    c.reward.scorer = "diversity"  # the training reward (constrained: the faithful-rewrite reward)
    c.rest = ConfigDict()
    c.rest.rounds = 2  # grow -> improve rounds
    c.rest.k = 2  # rewrites sampled per train posting and round
    # round 0's sampler: lexicon_swap | inclusion_statement | prompted[:SOURCE] | a run/model dir
    # (an untrained base would only grow noise)
    c.rest.initial = "lexicon_swap"
    c.rest.limit = 0  # grow on the first N train postings only (0 = all)
    c.rest.temperature = 1.0  # sampling temperature of the round policies
    c.rest.batch_size = 16  # prompts per sampling batch
    # faithfulness of DPO pairs: cosine >= tau (= reward.constrained.tau, MiniLM) and header kept
    c.rest.tau = 0.9765
    c.rest.require_header = True
    c.rest.min_margin = 0.0  # DPO pairs: reward gap above this
    c.train.steps = 100  # training steps per round
    c.lock()
    return c
