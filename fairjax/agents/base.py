"""The trainer's view of an objective: pure functions bundled in an `Algorithm`."""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax

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
