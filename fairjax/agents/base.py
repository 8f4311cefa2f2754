"""The trainer's view of an objective: pure functions bundled in an `Algorithm`."""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

PyTree = Any
Batch = dict[str, jax.Array]


class Algorithm(NamedTuple):
    """An objective ready for the trainer.

    init(rng) -> (params, frozen): trainable params (optimised by optax) and frozen state
        (ILQL target trunk + target heads, a reference policy, or an empty dict).
    loss(params, frozen, batch, rng) -> (scalar loss, metrics dict of scalars); pure and jit-able.
    update_frozen(params, frozen, step) -> frozen: called after each optimizer step (Polyak/hard
        target updates for ILQL; identity for the others).
    policy(params, frozen) -> (module, lm_params): the language model used for generation.
    """

    name: str
    init: Callable[[jax.Array], tuple[PyTree, PyTree]]
    loss: Callable[[PyTree, PyTree, Batch, jax.Array], tuple[jax.Array, dict[str, jax.Array]]]
    update_frozen: Callable[[PyTree, PyTree, jax.Array], PyTree]
    policy: Callable[[PyTree, PyTree], tuple[Any, PyTree]]


def identity_update(params: PyTree, frozen: PyTree, step: jax.Array) -> PyTree:
    """`update_frozen` for objectives whose frozen state never changes."""
    del params, step
    return frozen


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
