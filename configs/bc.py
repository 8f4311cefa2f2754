"""Behaviour cloning (FMs-at-work `train_bc.yaml`): NLL of the response tokens.

`python -m fairjax.train --config=configs/bc.py`; the run dir then initialises ILQL with
`--config.init.policy=runs/bc`.
"""
from fairjax.config_files import sibling

common = sibling("common", __file__)


def get_config():
    c = common.base_config("bc")
    c.bc = common.ConfigDict()
    c.bc.transition_weight = 0.0  # weight of non-action (prompt) tokens in the NLL (upstream 0)
    c.bc.normalize = "upstream"  # upstream (divide by all real tokens) | per_token (response only)
    c.bc.train_dropout = False  # run the LM with dropout while training (upstream: yes, 0.1)
    return common.finish(c)
