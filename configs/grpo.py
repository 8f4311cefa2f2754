"""Online GRPO (DeepSeekMath; trl GRPOTrainer semantics) with the fairness reward in the loop.

`python -m fairjax.train --config=configs/grpo.py` on the demo corpus: BC warm start (RUN_DIR/bc)
-> GRPO from the BC policy (RUN_DIR) -> evaluation of GRPO beside BC (RUN_DIR/eval). Each step
samples `group_size` rewrites of `optim.batch_size / group_size` job prompts, scores them on the
host with `reward.scorer`, and updates (docs/online_rl.md). `--config.grpo.loss_type=dr_grpo
--config.grpo.scale_rewards=False` is Dr. GRPO; `--config.grpo.epsilon_high=0.28
--config.grpo.loss_type=dapo` DAPO's clip-higher and token mean; `--config.algorithm=rloo` with
configs/rloo-style keys is RLOO (see configs/ppo.py for PPO).
"""
from fairjax.config_files import sibling

common = sibling("common", __file__)


def online_block(c, algo: str):
    """The sampling / update keys every online objective shares (fairjax/agents/online.py)."""
    b = common.ConfigDict()
    b.group_size = 4  # G samples per prompt; must divide optim.batch_size
    # demo prompts (which quote the original) are ~215 tokens (max ~262), its postings ~125 (p95 ~150)
    b.max_prompt_tokens = 272  # prompt width (`<s>{prompt}</s>`, trimmed from the left)
    b.max_new_tokens = 160  # completion length (a rewrite cut here is scored, counted unfinished)
    b.temperature = 1.0
    b.top_k = 0  # 0 = off
    b.top_p = 1.0  # 1 = off
    b.epochs = 1  # passes over each rollout batch (trl num_iterations)
    b.minibatches = 1  # optimizer steps per pass
    b.reference = "initial"  # initial (frozen initial policy; LoRA: adapters off) | none
    c[algo] = b
    c.optim.lr = 1e-5
    c.optim.warmup_steps = 0
    c.optim.schedule = "constant"
    c.optim.weight_decay = 0.0
    c.train.steps = 40
    c.train.eval_every = 0
    c.train.save_every = 20
    c.train.log_every = 5
    # The reward in the loop: the demo stand-in is lexical; diversity needs a candidate pool
    # (reward.pool). A composite keeps the content so the policy cannot win by deleting it.
    c.reward.scorer = "composite"
    c.reward.composite = common.ConfigDict()
    c.reward.composite.terms = "gender_coded,preservation"
    c.reward.composite.weights = "1,1"
    c.reward.preservation = common.ConfigDict()
    c.reward.preservation.metric = "chrf"
    return b


def pipeline(c, bc_steps: int = 300):
    c.pipeline = common.ConfigDict()
    c.pipeline.bc_warm_start = True  # train RUN_DIR/bc first (skipped when init.policy is set)
    c.pipeline.bc_steps = bc_steps
    c.pipeline.bc_lr = 1e-3
    c.pipeline.evaluate = True  # rewrite every eval posting with BC and this run, score, report
    c.pipeline.adv_weights = ()  # ILQL only
    c.pipeline.eval_limit = 0
    c.pipeline.eval_pools = ""
    c.pipeline.eval_n_boot = 1000
    # rewrite length of the evaluation (0 = p95 of the eval postings' token lengths, capped at half
    # of the model's context so the prompt keeps the quoted original)
    c.pipeline.eval_max_new_tokens = 0
    c.stages = common.ConfigDict()
    c.stages.bc = common.stage(common.sibling("bc").get_config())
    c.stages.eval = common.sibling("eval").get_config()


def get_config():
    c = common.base_config("grpo")
    b = online_block(c, "grpo")
    b.epsilon_low = 0.2  # clip range of the token ratio
    b.epsilon_high = 0.2  # DAPO clip-higher: 0.28
    b.beta = 0.04  # k3 KL to the reference (0 = none, then reference may be "none")
    b.loss_type = "grpo"  # grpo | bnpo | dapo | dr_grpo
    b.scale_rewards = True  # divide by the group std (False = Dr. GRPO)
    b.max_completion_length = 0  # dr_grpo normaliser (0 = max_new_tokens)
    pipeline(c)
    return common.finish(c)
