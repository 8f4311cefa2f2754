"""The trainer's view of an objective (`Algorithm`) and the helpers every objective may use
(LM forward, response masks, reference copies): objectives import these, never each other."""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import flax.linen as nn

import jax
import jax.numpy as jnp

from fairjax.losses.common import scatter_positions, token_logprobs
from fairjax.losses.vocab import lm_token_ce, resolve_chunk

PyTree = Any
Batch = dict[str, jax.Array]


def identity_state(params: PyTree, frozen: PyTree) -> tuple[PyTree, PyTree]:
    """`Algorithm.merged` of an objective whose state is already in full (merged) form."""
    return params, frozen


class Algorithm(NamedTuple):
    """An objective ready for the trainer.

    init(rng) -> (params, frozen): trainable params (optimised by optax) and frozen state
        (ILQL target trunk + target heads, a reference policy, or an empty dict).
    loss(params, frozen, batch, rng) -> (scalar loss, metrics dict of scalars); pure and jit-able.
    update_frozen(params, frozen, step) -> frozen: called after each optimizer step (Polyak/hard
        target updates for ILQL; identity for the others).
    policy(params, frozen) -> (module, lm_params): the language model used for generation.
    merged(params, frozen) -> (params, frozen) in the objective's full layout (LoRA adapter sets
        merged into the base, `agents.lora.loraize`; identity otherwise): what decoding and
        export read (e.g. ILQL's value-guided decoding reads heads and trunks).
    """

    name: str
    init: Callable[[jax.Array], tuple[PyTree, PyTree]]
    loss: Callable[[PyTree, PyTree, Batch, jax.Array], tuple[jax.Array, dict[str, jax.Array]]]
    update_frozen: Callable[[PyTree, PyTree, jax.Array], PyTree]
    policy: Callable[[PyTree, PyTree], tuple[Any, PyTree]]
    merged: Callable[[PyTree, PyTree], tuple[PyTree, PyTree]] = identity_state


def mean_metrics(metrics: dict, info: Any, update_seconds: float) -> dict:
    """`Producer.summarize` default: each metric averaged over the step's updates."""
    import numpy as np

    del info, update_seconds
    return {k: float(np.mean(np.asarray(v, np.float64))) for k, v in metrics.items()}


class Producer(NamedTuple):
    """A source of training batches that reads the train state (online RL: rollouts of the
    current policy, scored and turned into advantages). The loop calls, every step,

        batch, info = produce(state, data_batch)    # state: {params, frozen, opt_state, step, rng}

    on the data iterator's batch (e.g. prompts) BEFORE the step, and trains on `batch` (a dict
    of numpy arrays, process-local rows, as a data iterator's) with its ordinary compiled step.
    The producer may only derive randomness from `state` (e.g. `fold_in(state["rng"],
    state["step"])`) and its data from `data_batch`, so the checkpointed state and iterator
    position reproduce it exactly on resume.

    updates: optimizer updates per produced batch: the batch's rows are `updates` consecutive
        update batches (e.g. epochs x minibatches of one rollout), applied in one compiled step
        (`loop.make_train_step(updates=)`); the step's metrics then have a leading [updates] axis.
    summarize(metrics, info, update_seconds) -> the step's logged metrics (floats; "finite"
        kept; "tokens", when present, is what tokens/s counts), from the step's device metrics
        (host numpy), the `info` of `produce` and the seconds of the compiled step.
    """

    produce: Callable[[dict, dict], tuple[dict, Any]]
    updates: int = 1
    summarize: Callable[[dict, Any, float], dict] = mean_metrics


def identity_update(params: PyTree, frozen: PyTree, step: jax.Array) -> PyTree:
    """`update_frozen` for objectives whose frozen state never changes."""
    del params, step
    return frozen


def count_attended(batch: dict) -> int:
    """Tokens a host batch trains on: Σ attn_mask (else the size of `tokens`; 0 if neither); the
    default `Objective.count_tokens` (tokens/s)."""
    import numpy as np

    if "attn_mask" in batch:
        return int(float(np.asarray(batch["attn_mask"]).sum()))
    if "tokens" in batch:
        return int(np.asarray(batch["tokens"]).size)
    return 0


# --------------------------------------------------------------------------- packed rows
def segment_inputs(batch: Batch) -> dict[str, jax.Array]:
    """Model keyword arguments for a packed batch (`fairjax.data.packing`): segment_ids and
    positions [B, T]; {} for an ordinary batch."""
    if "segment_ids" not in batch:
        return {}
    return {"segment_ids": batch["segment_ids"], "position_ids": batch["positions"]}


def loss_view(batch: Batch) -> Batch:
    """The batch the losses read. Packed: attn_mask [B, T] is zeroed at every episode's first
    token after the row's first, so a next-token target that crosses an episode boundary
    (`attn_mask[:, 1:]`) counts nowhere, as in the unpacked rows; an ordinary batch unchanged."""
    if "segment_ids" not in batch:
        return batch
    seg = batch["segment_ids"]  # [B, T]
    cont = jnp.concatenate([jnp.ones_like(seg[:, :1], bool), seg[:, 1:] == seg[:, :-1]], axis=1)
    return {**batch, "attn_mask": batch["attn_mask"] * cont.astype(batch["attn_mask"].dtype)}


# --------------------------------------------------------------------------- shared by objectives
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
