"""Online PPO (InstructGPT recipe; trl experimental PPO semantics) with the fairness reward.

`python -m fairjax.train --config=configs/ppo.py`: BC warm start -> PPO from the BC policy ->
evaluation beside BC. Per rollout batch: per-token KL-in-reward to the reference (`ppo.beta`),
the scalar reward on `</a>`, GAE(gamma, lam) with a value head (on the policy trunk or a
separate trunk), then `epochs` passes of `minibatches` clipped policy + clipped value updates
(docs/online_rl.md). `--config.algorithm=rloo` is not this file: see configs/grpo.py's keys.
"""
from fairjax.config_files import sibling

common = sibling("common", __file__)


def get_config():
    grpo = common.sibling("grpo")  # the online keys and the pipeline block shared with GRPO
    c = common.base_config("ppo")
    b = grpo.online_block(c, "ppo")
    b.group_size = 1  # PPO needs no group; prompts per step = optim.batch_size
    b.epochs = 2  # passes over each rollout batch
    b.minibatches = 2  # minibatches per pass
    b.value_trunk = "policy"  # value head on the policy trunk | separate (own trunk)
    b.value_hidden_mult = 2  # value head MLP width = mult * hidden
    b.gamma = 1.0  # GAE discount over completion tokens
    b.lam = 0.95  # GAE lambda
    b.epsilon = 0.2  # policy ratio clip
    b.value_clip = 0.2  # value clip around the rollout values
    b.vf_coef = 0.1  # value loss weight
    b.beta = 0.05  # per-token KL-in-reward coefficient
    b.whiten_advantages = True
    grpo.pipeline(c)
    return common.finish(c)
