"""A-LoL family (Baheti et al. 2024): advantage-weighted offline policy gradient.

Pick the variant: `--config.alol.algorithm=a_lol_seq` (nll, wbc, r_gold, r_lol, a_lol,
a_lol_ref_free, a_lol_seq, a_lol_kl). The reference policy is the initial policy (frozen).
"""
from fairjax.config_files import sibling

common = sibling("common", __file__)


def get_config():
    c = common.base_config("alol")
    c.alol = common.ConfigDict()
    c.alol.algorithm = "a_lol"  # nll | wbc | r_gold | r_lol | a_lol | a_lol_ref_free | a_lol_seq | a_lol_kl
    c.alol.ppo_clip = 0.9  # epsilon of the detached ratio clamp [1-eps, 1+eps]; <= 0 = no clamp
    c.alol.kl_beta = 0.0  # KL penalty weight (a_lol_kl)
    c.alol.gold_min_prob = 0.1  # GOLD token weight floor (r_gold)
    c.alol.clamp_ref_free_advantage = False  # a_lol_ref_free uses A+ instead of A
    c.alol.reward_transform = "none"  # none | sigmoid, applied to rewards
    # good_priority: examples drawn with replacement, p ∝ A+ (A = R - mean R; ∝ R for wbc/r_gold/
    # r_lol) | good_random: uniform over A > 0 | uniform: all examples (A+ in the loss)
    c.alol.sampling = "good_priority"
    # Baseline of A = R - baseline: value_head = the paper's V(x), an attention head over the frozen
    # reference's prompt states fit by MSE on the train rewards before policy training | mean =
    # the constant mean train reward
    c.alol.baseline = "value_head"
    c.alol.value_steps = 300  # V(x) fit steps (batch 16, AdamW)
    c.alol.value_lr = 1e-3  # V(x) learning rate
    c.alol.value_max_examples = 4096  # train examples the fit sees (seeded sample; memory N*T*d)
    c.reward.normalize = "minmax"  # wbc / r_gold / r_lol need non-negative rewards
    c.optim.lr = 1e-4

    # A-LoL's reference is a trained (SFT/BC) policy: `python -m fairjax.train
    # --config=configs/alol.py` trains RUN_DIR/bc first unless init.policy names a BC run
    # (from a random model the reference NLL is ~ln V and V(x) has nothing to read)
    c.pipeline = common.ConfigDict()
    c.pipeline.bc_warm_start = True
    c.pipeline.bc_steps = 300  # BC optimizer steps
    c.pipeline.bc_lr = 1e-3  # BC peak learning rate (tiny demo model from scratch)
    c.pipeline.evaluate = False  # (the pipeline's evaluation stage is ILQL's)
    c.stages = common.ConfigDict()
    c.stages.bc = common.stage(common.sibling("bc").get_config())
    return common.finish(c)
