"""A-LoL's learned baseline: fit V(x) on the frozen reference before policy training.

Baheti et al. 2024 ("Leftover Lunch", §2): A(x, y) = R(x, y) − V_πref(x), with V fit by MSE on the
reference policy's rewards, the reference's final hidden states over the prompt pooled by an
attention head (`models.heads.AttentionValueHead`). Offline, the training postings are the reference
(BC) policy's demonstrations, so V is fit on the training split's (transformed) rewards; it is
then frozen and every training example gets its advantage once, before the first policy step.

`fit_reference_values(module, ref_params, episodes, ...)` -> (values [N], head params, info) with
info = {"mse", "mse_history", "reward_var", "explained_variance", "n_fit"}.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from fairjax.agents.base import context_mask, lm_forward
from fairjax.data.layout import collate
from fairjax.losses.alol import transform_rewards
from fairjax.models.heads import (AttentionValueHead, ValueHeadConfig, init_value_head,
                                  predict_values)

PyTree = Any


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


def prompt_hidden_states(model: nn.Module, ref_params: PyTree, batch: dict):
    """(hidden [B, T, d], prompt mask [B, T]) of the reference LM on `batch`: the inputs of
    `fit_value_head` / `predict_values` (collect them over the validation generations offline)."""
    _, hidden = lm_forward(model, ref_params, batch["tokens"], jnp.asarray(batch["attn_mask"]))
    return hidden, context_mask(batch)


PROMPT_BLOCK = 128  # prompt widths are rounded up to a multiple of this (few shapes, few compiles)


def _prompt_states(module, ref_params: PyTree, episodes: Sequence[Any], pad_id: int,
                   batch_size: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference hidden states over the prompt positions: ([N, width, d], mask [N, width]).

    The LM is causal, so a prompt's states need only the prompt's tokens: episodes are taken in
    order of prompt length and each batch runs on its prompt positions alone, padded to a
    multiple of PROMPT_BLOCK (one compilation per width, not per batch)."""
    fn = jax.jit(lambda p, b: prompt_hidden_states(module, p, b))
    n = len(episodes)
    lengths = np.array([int(e.action_idxs[0]) + 1 for e in episodes])
    order = np.argsort(lengths, kind="stable")
    hs = ms = None
    for s in range(0, n, batch_size):
        idx = order[s:s + batch_size]
        chunk = [episodes[i] for i in idx]
        w = int(-(-int(lengths[idx].max()) // PROMPT_BLOCK) * PROMPT_BLOCK)
        b = collate(chunk, pad_id, pad_to=max(w, max(e.length for e in chunk)), extras=True,
                    batch_size=batch_size)
        b = {"tokens": jnp.asarray(b["tokens"][:, :w]),
             "attn_mask": jnp.asarray(b["attn_mask"][:, :w]),
             "action_idxs": jnp.asarray(b["action_idxs"][:, :1])}
        h, m = jax.device_get(fn(ref_params, b))
        if hs is None:
            hs = np.zeros((n, width, h.shape[-1]), np.float32)
            ms = np.zeros((n, width), np.float32)
        k = min(w, width)
        hs[idx, :k] = np.asarray(h[:len(idx), :k], np.float32)
        ms[idx, :k] = np.asarray(m[:len(idx), :k], np.float32)
    return hs, ms


def fit_reference_values(module, ref_params: PyTree, episodes: Sequence[Any], pad_id: int, *,
                         steps: int = 200, lr: float = 1e-4, seed: int = 0, batch_size: int = 16,
                         max_examples: int = 4096, reward_transform: str = "none",
                         head: ValueHeadConfig = ValueHeadConfig(max_value=None, dropout=0.0)
                         ) -> tuple[np.ndarray, PyTree, dict]:
    """Fit V(x) on (up to `max_examples`, seeded sample of) `episodes` [N] and predict it for all.

    Rewards: `transform_rewards(sequence_reward, reward_transform)`; the head is unbounded by
    default (`max_value=None`: rewards need not lie in [0, 1]). Returns values [N] float32.
    """
    if not episodes:
        raise ValueError("fit_reference_values: no training episodes")
    rewards = np.asarray(transform_rewards(jnp.asarray([e.sequence_reward for e in episodes]),
                                           reward_transform), np.float32)
    # prompt = every position up to the first action (causal: its states ignore the response)
    width = max(int(e.action_idxs[0]) + 1 for e in episodes)
    rng = np.random.default_rng(seed)
    fit_idx = np.sort(rng.permutation(len(episodes))[:max_examples])
    h, m = _prompt_states(module, ref_params, [episodes[i] for i in fit_idx], pad_id, batch_size, width)
    params, info = fit_value_head(h, m, rewards[fit_idx], steps=steps, lr=lr, seed=seed,
                                  batch_size=batch_size, cfg=head)
    predict = jax.jit(lambda p, hh, mm: predict_values(p, hh, mm, head))
    values = []
    for s in range(0, len(episodes), 256):
        eps = list(episodes[s:s + 256])
        hh, mm = _prompt_states(module, ref_params, eps, pad_id, batch_size, width)
        values.append(np.asarray(predict(params, hh, mm), np.float32))
    values = np.concatenate(values)
    var = float(rewards.var())
    mse = float(np.mean(np.square(values - rewards)))
    return values, params, {"mse": info["mse"], "mse_history": info["mse_history"], "mse_all": mse,
                            "reward_var": var,
                            "explained_variance": 1.0 - mse / var if var > 0 else float("nan"),
                            "n_fit": int(fit_idx.size)}

