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

V(x) (`AttentionValueHead`): a learned query attends (multi-head, MASKED to the prompt; upstream's
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
import optax

from fairjax.agents.base import Algorithm, identity_update
from fairjax.agents.registry import Objective, choice, config_block, register
from fairjax.errors import ConfigError
from fairjax.losses.alol import ALGORITHMS, ALoLHParams, alol_loss, transform_rewards
from fairjax.losses.common import scatter_positions, token_logprobs
from fairjax.losses.vocab import lm_token_ce, resolve_chunk
from fairjax.models.heads import MLPHead

PyTree = Any


# ------------------------------------------------------------------------------- value head
@dataclasses.dataclass(frozen=True)
class ValueHeadConfig:
    """num_heads: attention heads of the pooling (upstream 8); max_value: V = σ(·)·max_value, None =
    linear output; dropout: on the hidden states and the pooled vector (upstream 0.1)."""

    num_heads: int = 8
    max_value: Optional[float] = 1.0
    dropout: float = 0.1
    hidden_mult: int = 2


class AttentionValueHead(nn.Module):
    """V(x): hidden [B, T, d] (reference LM, final layer), prompt_mask [B, T] -> [B] float32."""

    config: ValueHeadConfig = ValueHeadConfig()

    @nn.compact
    def __call__(self, hidden: jax.Array, prompt_mask: jax.Array, deterministic: bool = True):
        c = self.config
        B, T, d = hidden.shape
        x = nn.Dropout(c.dropout)(hidden.astype(jnp.float32), deterministic=deterministic)
        query = self.param("query", nn.initializers.normal(0.02), (d,), jnp.float32)
        q = jnp.broadcast_to(query, (B, 1, d))
        mask = prompt_mask.astype(bool)[:, None, None, :]  # [B, 1 (heads), 1 (query), T]
        pooled = nn.MultiHeadDotProductAttention(num_heads=c.num_heads, qkv_features=d,
                                                 out_features=d, name="attn")(q, x, mask=mask)
        pooled = nn.Dropout(c.dropout)(pooled[:, 0], deterministic=deterministic)  # [B, d]
        v = MLPHead(1, hidden_mult=c.hidden_mult, name="mlp")(pooled)[:, 0]
        if c.max_value is not None:
            v = jax.nn.sigmoid(v) * c.max_value
        return v


def init_value_head(rng: jax.Array, hidden_size: int, cfg: ValueHeadConfig = ValueHeadConfig()):
    """Random AttentionValueHead params for hidden size d."""
    return AttentionValueHead(cfg).init(rng, jnp.zeros((1, 2, hidden_size)), jnp.ones((1, 2)))["params"]


def predict_values(params: PyTree, hidden: jax.Array, prompt_mask: jax.Array,
                   cfg: ValueHeadConfig = ValueHeadConfig()) -> jax.Array:
    """Deterministic V(x).  hidden: [N, T, d]; prompt_mask: [N, T] -> [N]."""
    return AttentionValueHead(cfg).apply({"params": params}, hidden, prompt_mask)


def fit_value_head(hidden: np.ndarray,       # [N, T, d] reference hidden states (prompts)
                   prompt_mask: np.ndarray,  # [N, T]
                   rewards: np.ndarray,      # [N] rewards of the reference policy's generations
                   steps: int, lr: float = 1e-5, seed: int = 0, *,
                   batch_size: int = 16, cfg: ValueHeadConfig = ValueHeadConfig(),
                   weight_decay: float = 0.0, eval_every: Optional[int] = None,
                   init_params: Optional[PyTree] = None) -> tuple[PyTree, dict]:
    """Fit V by MSE(V(x), R) with AdamW (upstream HH: lr 1e-5, batch 16, 10 epochs).

    Minibatches follow seeded per-epoch permutations; every `eval_every` steps (default one epoch)
    and at the end the full-data MSE (dropout off) is measured and the best params are kept
    (upstream keeps the epoch with the lowest mean training MSE; there is no held-out split).
    Returns (params, {"mse": best full-data MSE, "mse_history": [...]}).
    """
    # Data stay on the host (numpy); minibatches are sent per step, so a large validation set is
    # neither embedded in the compiled program nor held on the device at once.
    hidden = np.asarray(hidden, np.float32)
    prompt_mask = np.asarray(prompt_mask, np.float32)
    rewards = np.asarray(rewards, np.float32).reshape(-1)
    N = hidden.shape[0]
    if prompt_mask.shape != hidden.shape[:2] or rewards.shape[0] != N:
        raise ValueError(f"fit_value_head: hidden {hidden.shape}, prompt_mask {prompt_mask.shape} "
                         f"and rewards {rewards.shape} must agree on [N, T]")
    if steps < 1:
        raise ValueError(f"fit_value_head: steps must be >= 1, got {steps}")
    bs = min(batch_size, N)
    per_epoch = max(N // bs, 1)
    eval_every = eval_every or per_epoch
    key = jax.random.PRNGKey(seed)
    key, k_init = jax.random.split(key)
    params = init_params if init_params is not None else init_value_head(k_init, hidden.shape[-1], cfg)
    module = AttentionValueHead(cfg)
    opt = optax.adamw(lr, weight_decay=weight_decay)
    opt_state = opt.init(params)

    @jax.jit
    def step(params, opt_state, h, m, r, rng):  # h [bs, T, d], m [bs, T], r [bs]
        def mse(p):
            v = module.apply({"params": p}, h, m, deterministic=False, rngs={"dropout": rng})
            return jnp.mean(jnp.square(v - r))

        loss, grads = jax.value_and_grad(mse)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    predict = jax.jit(lambda p, h, m: module.apply({"params": p}, h, m))

    def full_mse(p) -> float:  # deterministic, in chunks of bs (last chunk padded, then trimmed)
        preds = []
        for s0 in range(0, N, bs):
            idx = np.minimum(np.arange(s0, s0 + bs), N - 1)
            preds.append(np.asarray(predict(p, hidden[idx], prompt_mask[idx]))[: N - s0])
        return float(np.mean(np.square(np.concatenate(preds) - rewards)))

    rng = np.random.default_rng(seed)
    best, best_mse, history = params, full_mse(params), []
    order = rng.permutation(N)
    for s in range(steps):
        e = s % per_epoch
        if e == 0 and s > 0:
            order = rng.permutation(N)
        idx = order[e * bs:(e + 1) * bs]
        key, k = jax.random.split(key)
        params, opt_state, _ = step(params, opt_state, hidden[idx], prompt_mask[idx], rewards[idx], k)
        if (s + 1) % eval_every == 0 or s + 1 == steps:
            m = full_mse(params)
            history.append(m)
            if m < best_mse:
                best, best_mse = params, m
    return best, {"mse": best_mse, "mse_history": history}


def compute_advantages(values: np.ndarray, rewards: np.ndarray, reward_transform: str = "none"):
    """A = transform(R) − V(x) for the training set (cache it in the batch as `advantage`).

    values, rewards: [N] -> [N] numpy float32.
    """
    r = np.asarray(transform_rewards(jnp.asarray(rewards), reward_transform))
    return (r - np.asarray(values, np.float32)).astype(np.float32)


# ------------------------------------------------------------------------------- batch helpers
def target_mask(batch: dict, T: int) -> jax.Array:
    """[B, T-1] float32: 1 where column j (predicting token j+1) is a scored response token.

    From `response_mask` [B, T] when present, else from the layout (action_idxs [B, A], valid where
    terminals[:, :A] == 0).
    """
    if "response_mask" in batch:
        return jnp.asarray(batch["response_mask"], jnp.float32)[:, 1:]
    if "action_idxs" not in batch or "terminals" not in batch:
        raise KeyError("batch needs 'response_mask' [B, T] or 'action_idxs' [B, A] + 'terminals' "
                       f"[B, S] to locate the response tokens (keys: {sorted(batch)})")
    a = jnp.asarray(batch["action_idxs"], jnp.int32)
    valid = jnp.asarray(batch["terminals"])[:, :a.shape[1]] == 0
    return scatter_positions(jnp.ones(a.shape, jnp.float32), a, valid, T - 1)


def context_mask(batch: dict) -> jax.Array:
    """[B, T] prompt positions for the value head: `prompt_mask`, else `<s>...</s>` (positions up to
    the first action index)."""
    if "prompt_mask" in batch:
        return jnp.asarray(batch["prompt_mask"], jnp.float32)
    if "action_idxs" not in batch:
        raise KeyError(f"batch needs 'prompt_mask' [B, T] or 'action_idxs' [B, A] (keys: {sorted(batch)})")
    T = batch["tokens"].shape[1]
    first = jnp.asarray(batch["action_idxs"])[:, :1]
    return ((jnp.arange(T)[None, :] <= first) * jnp.asarray(batch["attn_mask"])).astype(jnp.float32)


def sequence_rewards(batch: dict) -> jax.Array:
    """[B]: `sequence_reward`, else Σ_t rewards[:, t] (the layout puts R on the last action)."""
    if "sequence_reward" in batch:
        return jnp.asarray(batch["sequence_reward"], jnp.float32)
    if "rewards" not in batch:
        raise KeyError(f"batch needs 'sequence_reward' [B] or 'rewards' [B, A] (keys: {sorted(batch)})")
    return jnp.sum(jnp.asarray(batch["rewards"], jnp.float32), axis=-1)


def lm_forward(model: nn.Module, params: PyTree, tokens: jax.Array, attn_mask: jax.Array,
               rng: Optional[jax.Array] = None, dropout: bool = False,
               vocab_chunk: Optional[int] = None):
    """(token log-probs [B, T-1], final hidden states [B, T, d]) of the LM on tokens [B, T].

    vocab_chunk > 0: log-probs from the hidden states and the LM head in vocabulary chunks
    (`fairjax.losses.vocab.lm_token_ce`: no [B, T, V] logits kept); 0: from the full logits;
    None: `fairjax.losses.vocab.resolve_chunk`."""
    det = not (dropout and rng is not None)
    vocab_chunk = resolve_chunk(vocab_chunk)
    lean = vocab_chunk > 0
    out = model.apply({"params": params}, tokens, attn_mask, deterministic=det,
                      rngs=None if det else {"dropout": rng}, compute_logits=not lean)
    h = out.hidden_states
    if lean:
        return -lm_token_ce(params, h, tokens, h.dtype, vocab_chunk), h
    return token_logprobs(out.logits, tokens), h


def prompt_hidden_states(model: nn.Module, ref_params: PyTree, batch: dict):
    """(hidden [B, T, d], prompt mask [B, T]) of the reference LM on `batch`: the inputs of
    `fit_value_head` / `predict_values` (collect them over the validation generations offline)."""
    _, hidden = lm_forward(model, ref_params, batch["tokens"], jnp.asarray(batch["attn_mask"]))
    return hidden, context_mask(batch)


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
        r_logp, ref_hidden = lm_forward(model, jax.lax.stop_gradient(frozen["ref"]), tokens, attn)
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


def init_with_reference(init: Any, keep_reference: bool, ref_params: Optional[PyTree] = None):
    """`rng -> (params, {"ref": copy of ref_params or of the initial params})` (`{}` if not kept).

    `init` is `rng -> params` or a params tree."""

    def init_fn(rng):
        params = init(rng) if callable(init) else init
        frozen = {}
        if keep_reference:
            frozen["ref"] = jax.tree.map(jnp.array, params if ref_params is None else ref_params)
        return params, frozen

    return init_fn


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


def build_lora(cfg: Any, module: nn.Module, model_config, base, lora_cfg) -> Algorithm:
    from fairjax.agents import lora

    return lora.alol_algorithm(module, from_config(cfg), base, lora_cfg, model_config.kind)


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
    from fairjax.agents.alol_value import fit_reference_values

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
    from fairjax.data.alol_sampler import PrioritySampler

    if cfg.alol.sampling == "uniform":
        return episodes
    rewards = np.asarray([e.sequence_reward for e in episodes], np.float64)
    weights = advantage if from_config(cfg).hparams.needs_advantage else rewards
    try:
        sampler = PrioritySampler(weights, cfg.alol.sampling, seed=cfg.seed)
    except ValueError as e:
        raise ConfigError(f"config.alol.sampling={cfg.alol.sampling!r}: {e}") from None
    return [episodes[int(i)] for i in sampler.sample(len(episodes))]


def build_data(cfg: Any, tok, train_path: str, eval_path, trunc, reference: Optional[dict] = None):
    """Episodes with rewards; A = transform(R) − V(x) (`train_advantages`, reported in
    RUN_DIR/alol_value.json); `alol.sampling` resampling ∝ A⁺."""
    import functools
    import json
    import os

    from fairjax.data.episodes import episode_data
    from fairjax.data.layout import collate

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

    return episode_data(cfg, tok, train_path, eval_path, trunc, extras=True, prepare=prepare)


OBJECTIVE = register(Objective(name="alol", agent_config=from_config, build=build,
                               build_lora=build_lora, build_data=build_data))
