"""Per-token ILQL (FMs-at-work `config/hackernews/train_iql.yaml`, GPT-2 hackernews defaults).

Params: qv trunk + V/Q1/Q2 heads (trained), policy trunk (from `init.policy`, a BC run dir, else
the base model), target trunk + target Q heads (Polyak, frozen). The one-command demo:
`python -m fairjax.train --config=configs/ilql.py`.
"""
from fairjax.config_files import sibling

common = sibling("common", __file__)


def get_config():
    c = common.base_config("ilql")
    c.ilql = common.ConfigDict()
    c.ilql.gamma = 0.99  # discount
    c.ilql.tau = 0.6  # expectile of the V regression
    c.ilql.alpha = 0.005  # Polyak rate of the target trunk + heads (after every optimizer step)
    c.ilql.hard_update_every = 0  # full target copy every N optimizer steps (0 = never)
    c.ilql.cql_weight = 0.25  # CQL (cross-entropy of Q logits) weight
    c.ilql.cql_temp = 1.0  # CQL temperature
    c.ilql.awac_weight = 0.0  # AWAC / weighted-BC weight (0: the policy is the frozen BC model)
    c.ilql.v_weight = 1.0  # V (expectile) loss weight
    c.ilql.q_weight = 1.0  # Q (TD) loss weight
    c.ilql.dm_weight = 0.0  # DM margin loss weight
    c.ilql.dm_margin = 0.0  # DM margin
    c.ilql.double_q = True  # two Q heads, min for the target
    c.ilql.separate_policy = True  # policy trunk separate from the Q/V trunk
    c.ilql.separate_target = True  # target trunk separate from the Q/V trunk
    c.ilql.exp_weights = True  # AWAC weights exp(beta * A) (else a step function)
    c.ilql.beta = 0.0  # AWAC temperature (0 => weights 1)
    c.ilql.transition_weight = 0.0  # AWAC weight of non-action tokens
    c.ilql.clip_weight = common.optional(float)  # cap of the AWAC weights (None = none)
    c.ilql.mc_returns = False  # regress V to Monte-Carlo returns instead of the target Q
    c.ilql.detach_v = False  # stop the V-head gradient into the trunk
    c.ilql.detach_q = False  # stop the Q-head gradient into the trunk
    c.ilql.train_dropout = False  # dropout in the trunks while training (upstream: 0.1)
    c.ilql.generation = common.ConfigDict()
    c.ilql.generation.adv_weight = 8.0  # beta of pi_beta + beta*(Q - V) at generation (paper: 8)
    c.ilql.generation.temperature = 1.0  # sampling temperature
    c.ilql.generation.top_k = 0  # 0 = off
    c.optim.weight_decay = 0.1  # hx1-dev ILQL
    # Rewards sit on the </a> action: raw negative rewards (diversity ~ -22) make ending the worst
    # action at every state, so ILQL at beta >= 4 never finishes (docs/data-and-rewards.md)
    c.reward.normalize = "standardize"

    # The FMs-at-work workflow in one command (fairjax/pipeline.py): BC -> ILQL -> evaluation.
    # --config.pipeline.bc_warm_start=False --config.pipeline.evaluate=False = plain ILQL training.
    c.pipeline = common.ConfigDict()
    c.pipeline.bc_warm_start = True  # train RUN_DIR/bc first (skipped when init.policy is set)
    c.pipeline.bc_steps = 300  # BC optimizer steps
    c.pipeline.bc_lr = 1e-3  # BC peak learning rate (tiny demo model from scratch)
    c.pipeline.evaluate = True  # generate + score + report into RUN_DIR/eval after training
    c.pipeline.adv_weights = (1.0, 8.0)  # ILQL betas evaluated beside the BC policy (beta 0)
    c.pipeline.eval_limit = 0  # eval postings (0 = the whole eval split)
    c.pipeline.eval_pools = ""  # candidate pools for the scorer ("" = the demo candidates)
    c.pipeline.eval_n_boot = 1000  # bootstrap resamples of the report's CIs
    # rewrite length of the evaluation (0 = p95 of the eval postings' token lengths, capped at half
    # of the model's context so the prompt keeps the quoted original)
    c.pipeline.eval_max_new_tokens = 0
    # The stage configs travel inside this config (and so inside RUN_DIR/config.json): the BC
    # warm start is configs/bc.py without the fields it shares with this run (common.SHARED);
    # the evaluation is configs/eval.py. pipeline.bc_* / eval_* / adv_weights override them.
    c.stages = common.ConfigDict()
    c.stages.bc = common.stage(common.sibling("bc").get_config())
    c.stages.eval = common.sibling("eval").get_config()
    return common.finish(c)
