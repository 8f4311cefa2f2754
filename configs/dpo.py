"""Direct preference optimisation (Rafailov et al. 2023) on reward-ranked posting pairs.

Pairs: two responses to the same prompt, the higher-reward one is "chosen". The reference
policy is the initial policy (frozen).
"""
from fairjax.config_files import sibling

common = sibling("common", __file__)


def get_config():
    c = common.base_config("dpo")
    c.dpo = common.ConfigDict()
    c.dpo.beta = 0.1  # DPO beta
    c.dpo.label_smoothing = 0.0  # cDPO epsilon in [0, 0.5)
    c.dpo.loss_type = "sigmoid"  # sigmoid | ipo
    c.dpo.reference_free = False  # drop the reference log-ratio
    c.dpo.min_margin = 0.0  # only pairs whose reward gap exceeds this (derived pairs)
    # Pairs: a JSONL of {"prompt", "chosen", "rejected"}; "" = derive them from the postings of
    # data.train: each posting vs its gender-coded-wording counterfactual (lexicon rewriter),
    # ranked by the configured reward (reward.scorer over reward.pool; fairjax/data/pairs.py).
    c.dpo.pairs = ""
    c.dpo.eval_pairs = ""  # eval pairs JSONL ("" = derived from data.eval when pairs are derived)
    c.optim.lr = 5e-5
    return common.finish(c)
