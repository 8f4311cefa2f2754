"""Candidate matching for large pools with `jax.shard_map` (`DiversityConfig.matching="shard_map"`).

The pool's candidates are split across the devices (axis "pool"); each device computes the
cosine similarities of the texts to its candidates ([N, M/n], rows L2-normalised, so a matmul),
masks the ineligible ones with −inf and keeps its local top k (`lax.top_k`: ties by lower index);
the n local lists [N, n·k] are merged by a second top k. Device d holds candidates d·M/n ..
(d+1)·M/n − 1, so equal similarities stay ordered by lower candidate index, as in
`fairjax.eval.fairness.top_k_indices` (the numpy path). jax is imported only when this is used.
"""
from __future__ import annotations

import functools
from typing import Optional, Sequence

import numpy as np


@functools.lru_cache(maxsize=8)
def _matcher(devices: tuple, k_local: int, k: int):
    import jax
    import jax.numpy as jnp
    from jax.sharding import Mesh
    from jax.sharding import PartitionSpec as P

    mesh = Mesh(np.asarray(devices, dtype=object), ("pool",))

    def local(queries, pool, eligible):  # [N, D], [Ml, D], [N, Ml] -> [N, k_local] x 2
        sim = jnp.where(eligible, queries @ pool.T, -jnp.inf)
        vals, idx = jax.lax.top_k(sim, k_local)
        return vals, idx + jax.lax.axis_index("pool") * pool.shape[0]

    sharded = jax.shard_map(local, mesh=mesh, in_specs=(P(), P("pool"), P(None, "pool")),
                            out_specs=(P(None, "pool"), P(None, "pool")))

    @jax.jit
    def match(queries, pool, eligible):
        vals, idx = sharded(queries, pool, eligible)  # [N, n * k_local], device-major
        best_vals, pos = jax.lax.top_k(vals, k)
        return best_vals, jnp.take_along_axis(idx, pos, axis=1)

    return match


def sharded_top_k(queries: np.ndarray,  # [N, D] float32 text embeddings (L2-normalised rows)
                  pool: np.ndarray,  # [M, D] float32 candidate embeddings
                  k: int,
                  eligible: Optional[np.ndarray] = None,  # [N, M] bool (None = all)
                  devices: Optional[Sequence] = None) -> tuple[np.ndarray, np.ndarray]:
    """(top indices [N, min(k, M)] int64 best first, valid [N, min(k, M)] bool = finite
    similarity), the candidates split over `devices` (default: all local devices)."""
    import jax

    devices = tuple(devices if devices is not None else jax.local_devices())
    n_dev = len(devices)
    n, m = queries.shape[0], pool.shape[0]
    k = min(int(k), m)
    per = -(-m // n_dev)  # candidates per device; the pool is padded with ineligible rows
    pad = per * n_dev - m
    pool = np.concatenate([np.asarray(pool, np.float32),
                           np.zeros((pad, pool.shape[1]), np.float32)])
    ok = np.ones((n, m), bool) if eligible is None else np.asarray(eligible, bool)
    ok = np.concatenate([ok, np.zeros((n, pad), bool)], axis=1)
    match = _matcher(devices, min(k, per), k)
    vals, idx = match(np.asarray(queries, np.float32), pool, ok)
    return np.asarray(idx, np.int64), np.isfinite(np.asarray(vals))
