"""Device mesh, param/batch shardings and multi-host initialisation.

Mesh axes are ('data', 'fsdp', 'tensor'). Params are sharded by the model's regex partition
rules (`ModelConfig.partition_rules()`, matched with `models.common.match_partition_rules`) plus
rules for the value/Q heads; a dimension whose size the mesh axes do not divide is replicated
instead, and large leaves the rules leave fully replicated are sharded over 'fsdp' on their
largest divisible dimension (FSDP fallback). Batches are sharded over ('data', 'fsdp') on the
batch dimension.

The train step (`fairjax.train.loop.compile_train_step`) runs either as `jax.jit` with
`NamedSharding` in/out shardings (`mesh.impl = "gspmd"`, the default: XLA partitions the
global-batch step, FSDP all-gathers/reduce-scatters and tensor parallelism come from the
shardings) or as `jax.shard_map` with explicit collectives (`mesh.impl = "shard_map"`:
`loop.shard_map_grads`; the losses' batch reductions become global through
`losses.common.sharded_batch`, so both equal 1 device). docs/parallelism.md has the details;
`tests/test_parallel.py` checks both on 8 fake CPU devices (data=8 and data=4 x fsdp=2).

The `mesh` and `distributed` config blocks arrive typed (`MeshConfig`, `DistributedConfig`, converted
once by the caller with `typed_block`); `make_mesh` / `mesh_shape` / `initialize_distributed` refuse
a raw ConfigDict.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
from typing import Any, Mapping, Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from fairjax.errors import ConfigError
from fairjax.models.common import match_partition_rules
from fairjax.typed_config import check_choice, check_positive, require

MESH_AXES = ("data", "fsdp", "tensor")
# how the train step runs on the mesh (`mesh.impl`; fairjax.train.loop.compile_train_step)
MESH_IMPLS = ("gspmd", "shard_map")
BATCH_AXES = ("data", "fsdp")
# Leaves with at least this many elements that the rules leave replicated get sharded over
# 'fsdp' anyway (only when the 'fsdp' axis has size > 1).
FSDP_MIN_SIZE = 2 ** 14

# Rules for the heads of `fairjax.models.heads.MLPHead` (fc_in [d, 2d], fc_out [2d, out]); tried
# before the model's own rules, whose catch-all would replicate them.
HEAD_RULES: list[tuple[str, P]] = [
    (r"fc_in/kernel$", P("fsdp", "tensor")),
    (r"fc_out/kernel$", P("tensor", "fsdp")),
]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- mesh
@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """The `mesh` block: axis sizes (data, fsdp, tensor; at most one -1 = all devices left) and
    `impl` (gspmd | shard_map; shard_map runs data and fsdp parallelism only: tensor 1)."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    impl: str = "gspmd"

    def __post_init__(self):
        sizes = self.sizes()
        if sizes.count(-1) > 1:
            raise ConfigError(f"config.mesh={dict(zip(MESH_AXES, sizes))}: at most one axis may "
                              "be -1")
        if any(s == 0 or s < -1 for s in sizes):
            raise ConfigError(f"config.mesh={dict(zip(MESH_AXES, sizes))}: sizes must be >= 1 "
                              "or -1")
        check_choice("mesh.impl", self.impl, MESH_IMPLS)
        if self.impl == "shard_map" and self.tensor not in (1, -1):
            raise ConfigError(f"config.mesh.impl='shard_map' runs data and fsdp parallelism; "
                              f"config.mesh.tensor={self.tensor} needs mesh.impl='gspmd'")

    def sizes(self) -> list[int]:
        """[data, fsdp, tensor] as given (-1 unresolved)."""
        return [int(self.data), int(self.fsdp), int(self.tensor)]


def mesh_shape(mesh_cfg: MeshConfig, num_devices: int) -> tuple[int, int, int]:
    """Resolve (data, fsdp, tensor) sizes for `num_devices`: the -1 axis (at most one) takes
    the devices the others leave."""
    sizes = require(mesh_cfg, MeshConfig, "mesh_shape", "mesh").sizes()
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if num_devices % known:
            raise ConfigError(f"mesh={dict(zip(MESH_AXES, sizes))}: {num_devices} devices are not "
                              f"divisible by the fixed axes' product {known}")
        sizes[sizes.index(-1)] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise ConfigError(f"mesh={dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, "
                          f"but {num_devices} are available")
    return tuple(sizes)  # type: ignore[return-value]


def make_mesh(mesh_cfg: MeshConfig, devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
    """`Mesh` over ('data', 'fsdp', 'tensor') of the sizes of `mesh_cfg` (`mesh_shape`).

    Devices are ordered process-major, so each process owns a contiguous slice of the batch
    dimension (what `shard_batch` feeds with process-local rows).
    """
    devices = list(devices if devices is not None else jax.devices())
    devices.sort(key=lambda d: (d.process_index, d.id))
    shape = mesh_shape(mesh_cfg, len(devices))
    return Mesh(np.asarray(devices, dtype=object).reshape(shape), MESH_AXES)


def data_parallel_size(mesh: Mesh) -> int:
    """Number of batch shards: |data| * |fsdp|."""
    return mesh.shape["data"] * mesh.shape["fsdp"]


# --------------------------------------------------------------------------- params
def _axis_size(mesh: Mesh, entry: Any) -> int:
    if entry is None:
        return 1
    names = entry if isinstance(entry, tuple) else (entry,)
    return math.prod(mesh.shape[n] for n in names)


def fit_spec(spec: P, shape: Sequence[int], mesh: Mesh) -> P:
    """Make `spec` valid for an array of `shape` on `mesh`: dims the mesh axes do not divide
    are replicated; a large fully-replicated leaf is sharded over 'fsdp' on its largest
    divisible dimension."""
    entries = list(spec) + [None] * (len(shape) - len(spec))
    entries = [e if (e is None or shape[i] % _axis_size(mesh, e) == 0) else None
               for i, e in enumerate(entries[:len(shape)])]
    fsdp = mesh.shape["fsdp"]
    used = {n for e in entries if e is not None for n in (e if isinstance(e, tuple) else (e,))}
    if fsdp > 1 and "fsdp" not in used and math.prod(shape) >= FSDP_MIN_SIZE:
        for i in sorted(range(len(shape)), key=lambda i: -shape[i]):
            if entries[i] is None and shape[i] % fsdp == 0:
                entries[i] = "fsdp"
                break
    while entries and entries[-1] is None:
        entries.pop()
    return P(*entries)


def param_specs(params: Any, rules: Sequence[tuple[str, P]], mesh: Mesh) -> Any:
    """Pytree of PartitionSpec for `params` (arrays or ShapeDtypeStructs): HEAD_RULES, then
    `rules` (the model's; must end with a catch-all), fitted to the mesh by `fit_spec`."""
    specs = match_partition_rules(list(HEAD_RULES) + list(rules), params)
    return jax.tree.map(lambda s, p: fit_spec(s, np.shape(p), mesh), specs, params,
                        is_leaf=lambda x: isinstance(x, P))


def named_shardings(mesh: Mesh, specs: Any) -> Any:
    """PartitionSpec pytree -> NamedSharding pytree."""
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, P))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


# --------------------------------------------------------------------------- batches
def batch_sharding(mesh: Mesh, leading_unsharded: int = 1) -> NamedSharding:
    """Sharding of a stacked batch `[accum, B, ...]`: dim 1 (B) over ('data', 'fsdp')."""
    return NamedSharding(mesh, P(*([None] * leading_unsharded), BATCH_AXES))


def shard_batch(batch: Mapping[str, np.ndarray], mesh: Mesh, leading_unsharded: int = 1) -> dict:
    """Process-local numpy batch -> global jax arrays sharded over ('data', 'fsdp').

    Each process passes ITS rows (a contiguous 1/process_count slice of the global batch
    along the batch dimension); with one process that is the whole batch.
    """
    sharding = batch_sharding(mesh, leading_unsharded)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
            for k, v in batch.items()}


def process_slice(global_rows: int, process_index: Optional[int] = None,
                  process_count: Optional[int] = None) -> slice:
    """Rows of a global batch that this process feeds (contiguous, equal parts)."""
    pi = jax.process_index() if process_index is None else process_index
    pc = jax.process_count() if process_count is None else process_count
    if global_rows % pc:
        raise ConfigError(f"global batch of {global_rows} rows is not divisible by "
                          f"{pc} processes")
    per = global_rows // pc
    return slice(pi * per, (pi + 1) * per)


# --------------------------------------------------------------------------- multi-host
ENV_COORDINATOR = "FAIRJAX_COORDINATOR"
ENV_NUM_PROCESSES = "FAIRJAX_NUM_PROCESSES"
ENV_PROCESS_ID = "FAIRJAX_PROCESS_ID"


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """The `distributed` block (configs/common.py): the coordinator, process count and id ("" /
    0 / -1: from the FAIRJAX_* env vars), `auto` (JAX's cluster detection), the runtime's
    timeouts and `step_timeout_s` (multi-process: exit when no step completes for this long;
    0 = never)."""

    coordinator: str = ""
    num_processes: int = 0
    process_id: int = -1
    auto: bool = False
    initialization_timeout_s: int = 300
    heartbeat_timeout_s: int = 60
    shutdown_timeout_s: int = 60
    step_timeout_s: int = 600

    def __post_init__(self):
        check_positive("distributed.num_processes", self.num_processes, allow_zero=True)
        if self.process_id < -1:
            raise ConfigError(f"config.distributed.process_id={self.process_id}; expected >= 0 "
                              "or -1 (from the environment)")
        for name in ("initialization_timeout_s", "heartbeat_timeout_s", "shutdown_timeout_s"):
            check_positive(f"distributed.{name}", getattr(self, name))
        check_positive("distributed.step_timeout_s", self.step_timeout_s, allow_zero=True)


def initialize_distributed(dist_cfg: DistributedConfig) -> bool:
    """Call `jax.distributed.initialize` when the run is multi-process; returns True if it did.

    Sources, first wins: the config (`distributed.coordinator`, `.num_processes`,
    `.process_id`), then the env vars FAIRJAX_COORDINATOR / FAIRJAX_NUM_PROCESSES /
    FAIRJAX_PROCESS_ID (set by launch/local_multihost.sh), then JAX's own cluster detection
    (TPU pods, SLURM: `distributed.auto=True` calls initialize() without arguments).
    On CPU, collectives go through gloo. A dead peer makes the others fail after
    `heartbeat_timeout_s` instead of hanging. Must run before any other JAX call.
    """
    require(dist_cfg, DistributedConfig, "initialize_distributed", "distributed")
    coordinator = dist_cfg.coordinator or os.environ.get(ENV_COORDINATOR, "")
    num = int(dist_cfg.num_processes or os.environ.get(ENV_NUM_PROCESSES, 0) or 0)
    pid = int(dist_cfg.process_id if dist_cfg.process_id >= 0
              else os.environ.get(ENV_PROCESS_ID, -1))
    explicit = bool(coordinator) or num > 1
    if not explicit and not dist_cfg.auto:
        return False
    if explicit and (not coordinator or num < 1 or pid < 0):
        raise ConfigError(
            f"multi-process run needs distributed.coordinator, .num_processes and .process_id "
            f"(or ${ENV_COORDINATOR}/${ENV_NUM_PROCESSES}/${ENV_PROCESS_ID}); got "
            f"coordinator={coordinator!r} num_processes={num} process_id={pid}")
    # Required for cross-process CPU collectives; has no effect on GPU/TPU backends.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs: dict[str, Any] = dict(
        initialization_timeout=int(dist_cfg.initialization_timeout_s),
        heartbeat_timeout_seconds=int(dist_cfg.heartbeat_timeout_s),
        shutdown_timeout_seconds=int(dist_cfg.shutdown_timeout_s),
    )
    if explicit:
        kwargs.update(coordinator_address=coordinator, num_processes=num, process_id=pid)
    jax.distributed.initialize(**kwargs)
    log.info("jax.distributed: process %d/%d, %d local / %d global devices",
             jax.process_index(), jax.process_count(), jax.local_device_count(),
             jax.device_count())
    return True


def is_main_process() -> bool:
    return jax.process_index() == 0
