"""Online RLOO (Ahmadian et al. 2024; trl RLOOTrainer semantics): REINFORCE with a leave-one-out
baseline over the group_size samples of a prompt, sequence-level clipped ratio, optional k1 KL
folded into the reward. Same pipeline and sampling keys as configs/grpo.py."""
import importlib.util
import os

# configs/grpo.py holds the online keys and the pipeline block (and loads configs/common.py)
_grpo = importlib.util.spec_from_file_location(
    "fairjax_configs_grpo", os.path.join(os.path.dirname(os.path.abspath(__file__)), "grpo.py"))
grpo = importlib.util.module_from_spec(_grpo)
_grpo.loader.exec_module(grpo)


def get_config():
    c = grpo.common.base_config("rloo")
    b = grpo.online_block(c, "rloo")
    b.epsilon_low = 0.2
    b.epsilon_high = 0.2
    b.beta = 0.05  # k1 KL to the reference, summed over the completion, subtracted from r
    b.normalize_advantages = False  # whiten A over the batch
    grpo.pipeline(c)
    return grpo.common.finish(c)
