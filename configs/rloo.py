"""Online RLOO (Ahmadian et al. 2024; trl RLOOTrainer semantics): REINFORCE with a leave-one-out
baseline over the group_size samples of a prompt, sequence-level clipped ratio, optional k1 KL
folded into the reward. Same pipeline and sampling keys as configs/grpo.py."""
from fairjax.config_files import sibling

# configs/grpo.py holds the online keys and the pipeline block (and loads configs/common.py)
grpo = sibling("grpo", __file__)


def get_config():
    c = grpo.common.base_config("rloo")
    b = grpo.online_block(c, "rloo")
    b.epsilon_low = 0.2
    b.epsilon_high = 0.2
    b.beta = 0.05  # k1 KL to the reference, summed over the completion, subtracted from r
    b.normalize_advantages = False  # whiten A over the batch
    grpo.pipeline(c)
    return grpo.common.finish(c)
