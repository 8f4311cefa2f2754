"""A-LoL's learned baseline: fit V(x) on the frozen reference before policy training.

Baheti et al. 2024 ("Leftover Lunch", §2): A(x, y) = R(x, y) − V_πref(x), with V fit by MSE on the
reference policy's rewards, the reference's final hidden states over the prompt pooled by an
attention head (`alol.AttentionValueHead`). Offline, the training postings are the reference
(BC) policy's demonstrations, so V is fit on the training split's (transformed) rewards; it is
then frozen and every training example gets its advantage once, before the first policy step.

`fit_reference_values(module, ref_params, episodes, ...)` -> (values [N], head params, info) with
info = {"mse", "mse_history", "reward_var", "explained_variance", "n_fit"}.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fairjax.agents.alol import (ValueHeadConfig, fit_value_head, predict_values,
                                 prompt_hidden_states)
from fairjax.data.layout import collate
from fairjax.losses.alol import transform_rewards

PyTree = Any


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

