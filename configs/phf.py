"""Pretraining with human feedback objectives (Korbak et al. 2023) on the job corpus.

`--config.phf.objective=` filtering | unlikelihood | awr | rwr (mle = plain LM); the token scores
of unlikelihood/AWR/RWR are -reward on every token of a posting.
"""
from fairjax.config_files import sibling

common = sibling("common", __file__)


def get_config():
    c = common.base_config("phf")
    c.phf = common.ConfigDict()
    # mle | filtering | unlikelihood | awr | rwr (conditional: library only, see docs/objectives.md)
    c.phf.objective = "awr"
    c.phf.threshold = 0.0  # reward threshold (filtering keeps >=; conditional: good/bad token)
    c.phf.ul_alpha = 1.0  # unlikelihood weight
    # unlikelihood token-score threshold on the scale of the token scores, -reward after
    # reward.normalize (standardised below: 0.5 = postings more than half a standard deviation
    # below the mean reward get the unlikelihood term, about a third of them); a threshold that
    # leaves every train posting on one side is refused; upstream toxicity threshold: 0.00078
    c.phf.ul_threshold = 0.5
    c.phf.awr_alpha = 0.5  # AWR value-loss weight
    c.phf.awr_beta = 1.0  # AWR / RWR temperature
    c.phf.clip_weight_max = 1000.0  # cap of exp(A / beta)
    c.phf.use_value_head = True  # AWR: learned value baseline (else fixed_value)
    c.phf.fixed_value = common.optional(float)  # AWR baseline when use_value_head is False
    # AWR/RWR advantages standardised over each batch's scored tokens (w = exp(A/beta) of raw
    # diversity-scale rewards would be ~e^-21); False = upstream
    c.phf.normalize_advantage = True
    c.phf.train_on_prompt = False  # score the prompt tokens too (upstream LM data has no prompt)
    c.reward.normalize = "standardize"  # token scores = -normalised reward
    return common.finish(c)
