"""PHF agent: an LM (+ a per-token value head for AWR/RWR) trained with `fairjax.losses.phf`.

params = `{"lm": LM params}` plus, for AWR/RWR with a value head, `"value_head": {"kernel": [d, 1]}`
(upstream `apo/models.py` ValueHead: V_t = −sigmoid(h_t·W), no bias, W zero-initialised so V = −0.5
at init; range (−1, 0) like the reward −score). The head reads the LM's final hidden states; with
`detach_value_head=False` (upstream configs: `is_detached: false`) value-loss gradients also train
the trunk. frozen = {}.

Batch keys:
  tokens [B, T] int32, attn_mask [B, T] (optional; all ones for upstream's unpadded chunks),
  token_scores [B, T] float32: the misalignment score of each token's sentence
  (`fairjax.data.phf_transforms.constant_length_chunks`), needed by unlikelihood / awr / rwr.
Filtering and conditional training are MLE on transformed data (`phf_transforms`); for conditional
training add the control tokens to the tokenizer and resize the LM first.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fairjax.agents.base import Algorithm, identity_update, lm_forward, target_mask
from fairjax.agents.registry import Objective, choice, config_block, register
from fairjax.data.config import Batching, DataConfig
from fairjax.data.episodes import episode_data
from fairjax.data.jobs import JobsDataset
from fairjax.data.layout import collate
from fairjax.errors import ConfigError
from fairjax.losses.phf import OBJECTIVES, PHFHParams, phf_loss

PyTree = Any


@dataclasses.dataclass(frozen=True)
class PHFConfig:
    hparams: PHFHParams = PHFHParams()
    detach_value_head: bool = False
    train_dropout: bool = False
    train_on_prompt: bool = False  # False: only response tokens (and </a>) are scored, like BC


def init_value_head(hidden_size: int) -> dict:
    """Zero-initialised W [d, 1] (upstream)."""
    return {"kernel": jnp.zeros((hidden_size, 1), jnp.float32)}


def apply_value_head(p: dict, hidden: jax.Array) -> jax.Array:
    """V = −sigmoid(h·W).  hidden: [B, T, d] -> [B, T] float32."""
    return -jax.nn.sigmoid(jnp.einsum("btd,do->bt", hidden.astype(jnp.float32), p["kernel"]))


def loss_fn(model: nn.Module, cfg: PHFConfig, params: dict, batch: dict,
            rng: Optional[jax.Array] = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    tokens = batch["tokens"]
    attn = jnp.asarray(batch.get("attn_mask", jnp.ones(tokens.shape, jnp.float32)), jnp.float32)
    logp, hidden = lm_forward(model, params["lm"], tokens, attn, rng, cfg.train_dropout)
    values = None
    if cfg.hparams.needs_values:
        if "value_head" not in params:
            raise KeyError(f"PHF {cfg.hparams.objective}: params have no 'value_head'")
        h = jax.lax.stop_gradient(hidden) if cfg.detach_value_head else hidden
        values = apply_value_head(params["value_head"], h)
    scores = batch.get("token_scores")
    if cfg.hparams.objective in ("unlikelihood", "awr", "rwr") and scores is None:
        raise KeyError(f"PHF {cfg.hparams.objective}: batch needs 'token_scores' [B, T] "
                       f"(keys: {sorted(batch)})")
    mask = attn[:, 1:] * attn[:, :-1]
    if not cfg.train_on_prompt and ("response_mask" in batch or "action_idxs" in batch):
        # job episodes: response tokens only; plain LM text (no prompt/response split) keeps all
        mask = mask * target_mask(batch, tokens.shape[1])  # [B, T-1]
    return phf_loss(logp, mask, cfg.hparams, scores, values)


def make_algorithm(model: nn.Module, cfg: PHFConfig, init: Any, hidden_size: int) -> Algorithm:
    """`init(rng) -> LM params` or an LM params tree; `hidden_size` = d of the LM."""

    def init_fn(rng):
        params = {"lm": init(rng) if callable(init) else init}
        if cfg.hparams.needs_values:
            params["value_head"] = init_value_head(hidden_size)
        return params, {}

    return Algorithm(
        name=f"phf_{cfg.hparams.objective}",
        init=init_fn,
        loss=lambda params, frozen, batch, rng: loss_fn(model, cfg, params, batch, rng),
        update_frozen=identity_update,
        policy=lambda params, frozen: (model, params["lm"]),
    )


# ----------------------------------------------------------------------------- config wiring
ALIASES = {"filter": "filtering", "ul": "unlikelihood"}


def objective_of(cfg: Any) -> str:
    """`phf.objective` with its aliases resolved."""
    return ALIASES.get(cfg.phf.objective, cfg.phf.objective)


def from_config(cfg: Any) -> PHFConfig:
    """`PHFConfig` from the `phf` block; `phf.threshold` is read by the data hook (filtering)."""
    choice("phf.objective", objective_of(cfg), OBJECTIVES)
    return config_block(cfg, "phf", PHFConfig, hparams=PHFHParams, ignore=("threshold",),
                        convert={"objective": lambda o: ALIASES.get(o, o)})


def build(cfg: Any, module: nn.Module, model_config, base_params, policy) -> Algorithm:
    if objective_of(cfg) == "conditional":
        raise ConfigError("config.phf.objective='conditional' needs the <|aligned|>/"
                          "<|misaligned|> control tokens in the tokenizer and model "
                          "(fairjax.data.phf_transforms); it is not wired into the job-data "
                          "trainer: use mle | filtering | unlikelihood | awr | rwr")
    return make_algorithm(module, from_config(cfg), policy, model_config.hidden_size)


def with_token_scores(collate_fn):
    """Collate wrapper for unlikelihood/AWR/RWR on job data: every token of an episode carries
    its document's misalignment score −reward (PHF scores are "higher = worse"; upstream gives
    each token its sentence's score, a posting has one reward)."""
    def wrapped(*args, **kwargs):
        b = collate_fn(*args, **kwargs)
        score = -np.asarray(b["sequence_reward"], np.float32)[:, None]
        b["token_scores"] = (score * np.asarray(b["attn_mask"], np.float32)).astype(np.float32)
        return b
    return wrapped


def check_ul_threshold(cfg: Any, rewards, path: str) -> None:
    """ConfigError when `phf.ul_threshold` puts every train posting on one side (token score
    −reward, on the `reward.normalize` scale): unlikelihood would then be plain NLL (or pure UL)."""
    scores = -np.asarray(rewards, np.float64)
    thr = float(cfg.phf.ul_threshold)
    if thr == 0.0 or scores.size == 0:  # 0: soft weights 1 − s (upstream), no threshold
        return
    n_bad = int(np.sum(scores > thr))
    if n_bad in (0, scores.size):
        raise ConfigError(
            f"config.phf.ul_threshold={thr:g}: {'no' if n_bad == 0 else 'every'} posting of {path} "
            f"has a token score (−reward, reward.normalize={cfg.reward.normalize!r}) above it "
            f"(scores {scores.min():.3g}..{scores.max():.3g}), so unlikelihood would be "
            f"{'plain NLL' if n_bad == 0 else 'pure unlikelihood'}: put the threshold inside that range")


def build_data(cfg: Any, data: DataConfig, batching: Batching, tok, train_path: str, eval_path,
               trunc):
    """Episodes with rewards (`data`: the typed data block); filtering keeps reward >= `phf.threshold`; unlikelihood / AWR / RWR
    batches carry per-token scores."""
    import functools

    objective = objective_of(cfg)

    def select(ds, path):
        ds = JobsDataset([e for e in ds if e.reward is not None and e.reward >= cfg.phf.threshold])
        if len(ds) == 0:
            raise ConfigError(f"phf filtering: no example of {path} has reward >= "
                              f"{cfg.phf.threshold}")
        return ds

    def prepare(train_eps):
        if objective == "unlikelihood":
            check_ul_threshold(cfg, [train_eps[i].sequence_reward for i in range(len(train_eps))],
                               train_path)
        return train_eps, with_token_scores(functools.partial(collate, pad_id=tok.pad_id,
                                                              extras=True))

    return episode_data(data, batching, tok, train_path, eval_path, trunc, extras=True,
                        select=select if objective == "filtering" else None,
                        prepare=prepare if objective in ("unlikelihood", "awr", "rwr") else None)


OBJECTIVE = register(Objective(
    name="phf", agent_config=from_config, build=build, build_data=build_data,
    no_pack_reason="its batches carry per-episode token scores / control tokens that packed rows "
                   "do not carry"))
