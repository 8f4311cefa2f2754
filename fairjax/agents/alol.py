"""A-LoL agent: a policy LM trained with `fairjax.losses.alol`, a frozen reference LM and a frozen
attention-pooled value head V(x) (Baheti et al. 2024, "Leftover Lunch").

params = LM params (`fairjax.models` tree). frozen = `{"ref": reference LM params (optional),
"value_head": AttentionValueHead params (optional)}`; `frozen = {}` works when the batch carries the
reference log-probs and the advantage/value (saves the memory of a second LM).

Batch keys (`fairjax.data.layout.collate(..., extras=True)` produces the first group):
  tokens [B, T] int32, attn_mask [B, T] float32                     (always)
  response_mask [B, T]   1 at response tokens (and `</a>`) whose log-probs are scored; if absent it
                         is derived from action_idxs [B, A] + terminals [B, S] (FMs-at-work layout)
  sequence_reward [B]    R (else Σ rewards [B, A])
  prompt_mask [B, T]     context positions the value head attends over (else positions up to the
                         first action position, i.e. `<s>prompt</s>`)
  ref_logprobs [B, T-1]  optional precomputed log π_ref (column j scores token j+1; zero-padded)
  advantage [B]          optional precomputed A (overrides R − V); or value [B]: precomputed V(x)

V(x) (`fairjax.models.heads.AttentionValueHead`, fit by `alol_value.fit_value_head`): a learned query attends (multi-head, MASKED to the prompt; upstream's
`nn.MultiheadAttention` had no key-padding mask, so padded prompt positions leaked into V: fixed
here) over the frozen reference model's final hidden states at the prompt positions; then
`MLPHead(1)` and `sigmoid · max_value` (upstream HH: max_value 1 for σ-normalised rewards; set
`max_value=None` for an unbounded head). It is fit once, offline, by `fit_value_head` on the rewards
of the reference policy's own (greedy) validation generations, keeping the epoch with the lowest
training MSE as upstream. Upstream HH never put the head in eval mode, so advantages were computed
with dropout on; `predict_values` is deterministic (fixed).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fairjax.agents.alol_value import (fit_reference_values, fit_value_head,  # noqa: F401
                                       prompt_hidden_states)
from fairjax.agents.base import (Algorithm, context_mask, identity_update, init_with_reference,
                                 lm_forward, target_mask)
from fairjax.agents.registry import Objective, choice, config_block, register
from fairjax.data.alol_sampler import PrioritySampler
from fairjax.data.config import Batching, DataConfig
from fairjax.data.episodes import episode_data
from fairjax.data.layout import collate
from fairjax.errors import ConfigError
from fairjax.losses.alol import ALGORITHMS, ALoLHParams, alol_loss, transform_rewards
from fairjax.models.heads import (AttentionValueHead, ValueHeadConfig,  # noqa: F401
                                  init_value_head, predict_values)

PyTree = Any


def compute_advantages(values: np.ndarray, rewards: np.ndarray, reward_transform: str = "none"):
    """A = transform(R) − V(x) for the training set (cache it in the batch as `advantage`).

    values, rewards: [N] -> [N] numpy float32.
    """
    r = np.asarray(transform_rewards(jnp.asarray(rewards), reward_transform))
    return (r - np.asarray(values, np.float32)).astype(np.float32)


# ------------------------------------------------------------------------------- batch helpers
def sequence_rewards(batch: dict) -> jax.Array:
    """[B]: `sequence_reward`, else Σ_t rewards[:, t] (the layout puts R on the last action)."""
    if "sequence_reward" in batch:
        return jnp.asarray(batch["sequence_reward"], jnp.float32)
    if "rewards" not in batch:
        raise KeyError(f"batch needs 'sequence_reward' [B] or 'rewards' [B, A] (keys: {sorted(batch)})")
    return jnp.sum(jnp.asarray(batch["rewards"], jnp.float32), axis=-1)


# ------------------------------------------------------------------------------------ agent
@dataclasses.dataclass(frozen=True)
class ALoLConfig:
    """hparams: the loss; value_head: V(x) architecture; train_dropout: policy dropout in `loss`."""

    hparams: ALoLHParams = ALoLHParams()
    value_head: ValueHeadConfig = ValueHeadConfig()
    train_dropout: bool = False


def loss_fn(model: nn.Module, cfg: ALoLConfig, params: PyTree, frozen: dict, batch: dict,
            rng: Optional[jax.Array] = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """A-LoL loss of the policy `params` on `batch` (keys in the module doc)."""
    hp = cfg.hparams
    tokens, attn = batch["tokens"], jnp.asarray(batch["attn_mask"])
    logp, _ = lm_forward(model, params, tokens, attn, rng, cfg.train_dropout)
    mask = target_mask(batch, tokens.shape[1]) * attn[:, 1:]
    rewards = sequence_rewards(batch)
    need_values = hp.needs_advantage and "advantage" not in batch and "value" not in batch
    ref_logp = batch.get("ref_logprobs")
    ref_hidden = None
    if (hp.needs_reference and ref_logp is None) or need_values:
        if "ref" not in frozen:
            raise KeyError(f"A-LoL ({hp.algorithm}): frozen has no 'ref' params; put "
                           "'ref_logprobs' [B, T-1] and 'advantage'/'value' [B] in the batch instead")
        r_logp, ref_hidden = lm_forward(model, frozen["ref"], tokens, attn)  # frozen: never differentiated
        ref_logp = r_logp if ref_logp is None else ref_logp
    values = batch.get("value")
    if need_values:
        if "value_head" not in frozen:
            raise KeyError(f"A-LoL ({hp.algorithm}): needs 'advantage' or 'value' [B] in the batch "
                           "or frozen['value_head'] (fit it with fit_value_head)")
        values = predict_values(frozen["value_head"], jax.lax.stop_gradient(ref_hidden),
                                context_mask(batch), cfg.value_head)
    return alol_loss(logp, None if ref_logp is None else jax.lax.stop_gradient(ref_logp), mask,
                     rewards, values, hp, advantages=batch.get("advantage"))


def make_algorithm(model: nn.Module, cfg: ALoLConfig, init: Any, *,
                   ref_params: Optional[PyTree] = None, value_head_params: Optional[PyTree] = None,
                   keep_reference: bool = True) -> Algorithm:
    """`init(rng) -> params` or a params tree. The reference defaults to a copy of the initial
    policy (A-LoL's reference is the SFT policy) when `keep_reference`; set it False (and put
    `ref_logprobs` in batches) to keep one LM in memory."""

    base_init = init_with_reference(init, keep_reference, ref_params)

    def init_fn(rng):
        params, frozen = base_init(rng)
        if value_head_params is not None:
            frozen["value_head"] = value_head_params
        return params, frozen

    return Algorithm(
        name=cfg.hparams.algorithm,
        init=init_fn,
        loss=lambda params, frozen, batch, rng: loss_fn(model, cfg, params, frozen, batch, rng),
        update_frozen=identity_update,
        policy=lambda params, frozen: (model, params),
    )


# ----------------------------------------------------------------------------- config wiring
def from_config(cfg: Any) -> ALoLConfig:
    """`ALoLConfig` from the `alol` block (ppo_clip <= 0 = no clamp); `alol.sampling` is read by
    the data hook."""
    choice("alol.algorithm", cfg.alol.algorithm, ALGORITHMS)
    choice("alol.reward_transform", cfg.alol.reward_transform, ("none", "sigmoid"))
    choice("alol.baseline", cfg.alol.get("baseline", "mean"), ("value_head", "mean"))
    return config_block(cfg, "alol", ALoLConfig, hparams=ALoLHParams,
                        ignore=("sampling", "baseline", "value_steps", "value_lr",
                                "value_max_examples"),
                        convert={"ppo_clip": lambda v: v if v > 0 else None})


def build(cfg: Any, module: nn.Module, model_config, base_params, policy) -> Algorithm:
    return make_algorithm(module, from_config(cfg), policy)


def with_advantage(collate_fn, advantage: dict, transform: str, baseline: float):
    """Collate wrapper: `advantage` [B] from {id(episode): A} for the train episodes; other
    episodes (the eval split) get transform(R) − `baseline` (the mean train V(x)); padding 0."""
    def wrapped(items, *args, **kwargs):
        b = collate_fn(items, *args, **kwargs)
        r = np.asarray(transform_rewards(jnp.asarray(b["sequence_reward"]), transform))
        adv = [advantage.get(id(e), float(r[i]) - baseline) for i, e in enumerate(items)]
        b["advantage"] = np.asarray(adv + [0.0] * (len(r) - len(adv)), np.float32)
        return b
    return wrapped


def train_advantages(cfg: Any, episodes: list, pad_id: int, reference: Optional[dict]):
    """A = transform(R) − V(x) per train episode [N] and a report dict: V(x) fit on the frozen
    reference (`alol.baseline="value_head"`, `alol_value.fit_reference_values`) or the constant
    mean transformed reward (`"mean"`)."""
    hp = from_config(cfg).hparams
    r = np.asarray(transform_rewards(jnp.asarray([e.sequence_reward for e in episodes]),
                                     hp.reward_transform), np.float32)
    if cfg.alol.baseline == "mean" or not hp.needs_advantage:
        return r - r.mean(), {"baseline": "mean", "value_mean": float(r.mean())}
    if reference is None:
        raise ConfigError("config.alol.baseline='value_head' needs the reference policy while the "
                          "data is built (fairjax.train.build passes it); use baseline='mean'")
    a = cfg.alol
    values, _, info = fit_reference_values(
        reference["module"], reference["params"], episodes, pad_id, steps=a.value_steps,
        lr=a.value_lr, seed=cfg.seed, max_examples=a.value_max_examples,
        reward_transform=hp.reward_transform)
    return compute_advantages(values, r), {"baseline": "value_head", **info,
                                           "value_mean": float(values.mean()),
                                           "value_std": float(values.std())}


def alol_resample(cfg: Any, episodes: list, advantage: np.ndarray) -> list:
    """`alol.sampling` (A-LoL's priority sampling, data/alol_sampler.py): "uniform" keeps the data;
    "good_priority" / "good_random" draw len(episodes) examples with replacement, ∝ A⁺ = max(A, 0)
    with A = transform(R) − V(x) (∝ R for wbc / r_gold / r_lol) or uniformly over A > 0, seeded by
    `seed`. The draw is made once and reshuffled every epoch (upstream draws every batch: same
    distribution per epoch)."""
    if cfg.alol.sampling == "uniform":
        return episodes
    rewards = np.asarray([e.sequence_reward for e in episodes], np.float64)
    weights = advantage if from_config(cfg).hparams.needs_advantage else rewards
    try:
        sampler = PrioritySampler(weights, cfg.alol.sampling, seed=cfg.seed)
    except ValueError as e:
        raise ConfigError(f"config.alol.sampling={cfg.alol.sampling!r}: {e}") from None
    return [episodes[int(i)] for i in sampler.sample(len(episodes))]


def build_data(cfg: Any, data: DataConfig, batching: Batching, tok, train_path: str, eval_path,
               trunc, reference: Optional[dict] = None):
    """Episodes with rewards (`data`: the typed data block); A = transform(R) − V(x) (`train_advantages`, reported in
    RUN_DIR/alol_value.json); `alol.sampling` resampling ∝ A⁺."""
    import functools
    import json
    import os

    def prepare(train_eps):
        eps = [train_eps[i] for i in range(len(train_eps))]
        adv, info = train_advantages(cfg, eps, tok.pad_id, reference)
        if reference is not None and jax.process_index() == 0:
            with open(os.path.join(reference["run_dir"], "alol_value.json"), "w") as f:
                json.dump({**info, "advantage_mean": float(adv.mean()),
                           "advantage_pos_share": float((adv > 0).mean())}, f, indent=1)
            print(f"[alol] baseline {info['baseline']}: " + ", ".join(
                f"{k}={v:.4g}" for k, v in info.items() if isinstance(v, float)), flush=True)
        fn = with_advantage(functools.partial(collate, pad_id=tok.pad_id, extras=True),
                            {id(e): float(a) for e, a in zip(eps, adv)},
                            from_config(cfg).hparams.reward_transform, info["value_mean"])
        return alol_resample(cfg, eps, adv), fn

    return episode_data(data, batching, tok, train_path, eval_path, trunc, extras=True,
                        prepare=prepare)


OBJECTIVE = register(Objective(
    name="alol", agent_config=from_config, build=build, build_data=build_data,
    needs_reference=True,  # V(x) is fit on the initial policy while the data is built
    no_pack_reason="its batches carry per-episode extras (sequence reward, advantage, importance "
                   "weights over a whole row) that packed rows do not carry"))
