"""Pieces shared by the Flax language models (GPT-2, LLaMA).

* `LMOutput`: what every LM call returns.
* `KVCache` / `init_cache`: an explicit pytree KV cache for incremental decoding.
* `attention_mask_and_positions`, `attention`: masking (left/right padding + causal) and
  scaled dot-product attention with grouped KV heads, softmax in float32.
* `rope_tables` / `apply_rope`: rotary embeddings in Hugging Face's rotate-half convention.
* `remat_block`: optional activation rematerialisation per transformer block.
* `run_blocks`: the block stack, unrolled (`h_0..`) or under `nn.scan` (`scan_layers`: params
  and KV cache stacked on a leading layer axis; layout conversion is `models/layout.py`).
* `match_partition_rules`: regex partition rules -> pytree of `PartitionSpec`.
* `params_from_state_dict` / `params_to_state_dict`: generic HF key-map conversion that raises
  `CheckpointMismatchError` listing missing / unexpected keys and wrong shapes.

Intermediates: every LM sows `embeddings` (input of block 0, [B, T, d]) and `block_outputs`
(one [B, T, d] per block, before the final norm) into the `intermediates` collection; read them
with `model.apply(vars, ..., mutable=["intermediates"])` or `forward_with_intermediates`.
"""
from __future__ import annotations

import json
import re
from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from fairjax.errors import CheckpointMismatchError, ConfigError

MASK_VALUE = float(np.finfo(np.float32).min)  # what HF adds at masked attention entries

ATTENTION_IMPLS = ("xla", "cudnn", "auto")  # see `attention`
REMAT_POLICIES: dict[str, Any] = {
    "none": None,
    "block": jax.checkpoint_policies.nothing_saveable,       # recompute the whole block
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # keep weight-matmul outputs
    "dots_saveable": jax.checkpoint_policies.dots_saveable,  # keep every matmul output
    # keep weight-matmul outputs in pinned host memory (device -> host offload; GPU/TPU)
    "offload": jax.checkpoint_policies.offload_dot_with_no_batch_dims("device", "pinned_host"),
}


class LMOutput(NamedTuple):
    """Output of an LM call.

    logits:        [B, T, V] float32, or None when `compute_logits=False`.
    hidden_states: [B, T, d] final hidden states AFTER the final norm (value heads read these).
    cache:         the updated `KVCache`, or None when called without one.
    """

    logits: Optional[jax.Array]
    hidden_states: jax.Array
    cache: Optional["KVCache"]


@flax.struct.dataclass
class KVCache:
    """Per-layer keys/values and the next write slot.

    k, v:  tuples (one per layer) of [B, H_kv, S_max, Dh] arrays (head-major: the layout the
           attention contractions read directly, so a decoding step never transposes the cache),
           or, for a `scan_layers` model, one stacked [L, B, H_kv, S_max, Dh] array each.
    index: int32 scalar, the slot where the next token's keys are written.
    """

    k: Any
    v: Any
    index: jax.Array

    @property
    def max_len(self) -> int:
        return self.k[0].shape[2]

    @property
    def stacked(self) -> bool:
        return not isinstance(self.k, (tuple, list))

    def take_rows(self, rows: jax.Array) -> "KVCache":
        """The cache with batch rows `rows` [B'] (beam reordering); works for both layouts."""
        axis = 1 if self.stacked else 0
        take = lambda a: jnp.take(a, rows, axis=axis)  # noqa: E731
        return KVCache(k=jax.tree.map(take, self.k), v=jax.tree.map(take, self.v),
                       index=self.index)


def init_cache(config, batch: int, max_len: int, dtype=None) -> KVCache:
    """Empty cache for `config` (any LM config with num_layers/num_kv_heads/head_dim).

    dtype defaults to the config's compute dtype.
    """
    dtype = jnp.dtype(dtype or config.dtype)
    shape = (batch, config.num_kv_heads, max_len, config.head_dim)
    if getattr(config, "scan_layers", False):  # one [L, B, H_kv, S_max, Dh] array each
        stacked = (config.num_layers,) + shape
        return KVCache(k=jnp.zeros(stacked, dtype), v=jnp.zeros(stacked, dtype),
                       index=jnp.zeros((), jnp.int32))
    zeros = tuple(jnp.zeros(shape, dtype) for _ in range(config.num_layers))
    return KVCache(k=zeros, v=tuple(jnp.zeros(shape, dtype) for _ in range(config.num_layers)),
                   index=jnp.zeros((), jnp.int32))


def default_position_ids(attention_mask: jax.Array) -> jax.Array:
    """`clip(cumsum(mask) - 1, 0)`: 0.. over real tokens for left or right padding.

    attention_mask: [B, S] -> position ids [B, S] int32.
    """
    return jnp.clip(jnp.cumsum(attention_mask.astype(jnp.int32), axis=-1) - 1, 0)


def segment_position_ids(segment_ids: jax.Array) -> jax.Array:
    """Positions that restart at 0 where a packed segment starts: [B, T] int -> [B, T] int32.

    Position j of a row is j − (index of the first token of j's segment); padding (segment 0)
    continues the count of whatever precedes it (its keys are masked, so it is never read).
    """
    t = segment_ids.shape[1]
    idx = jnp.arange(t, dtype=jnp.int32)[None, :]
    new = jnp.concatenate([jnp.ones_like(segment_ids[:, :1], bool),
                           segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)  # [B, T]
    start = jax.lax.cummax(jnp.where(new, idx, 0), axis=1)  # first index of the current segment
    return (idx - start).astype(jnp.int32)


def attention_mask_and_positions(
    input_ids: jax.Array,  # [B, T]
    attention_mask: Optional[jax.Array],  # [B, T], or [B, S_max] with a cache
    position_ids: Optional[jax.Array],  # [B, T]
    cache: Optional[KVCache],
    segment_ids: Optional[jax.Array] = None,  # [B, T] int: 1..k per packed episode, 0 = padding
) -> tuple[jax.Array, jax.Array, Optional[jax.Array]]:
    """Boolean attention mask [B, 1, T, S] (key is real AND not in the future), position ids
    [B, T] and the absolute write index (None without cache).

    Without a cache S = T. With a cache S = S_max, query t sits at slot `cache.index + t`.
    With `segment_ids` (packed rows, `fairjax.data.packing`; no cache) a query also sees only
    keys of its own segment (block-diagonal causal mask) and `position_ids=None` restarts at 0
    in every segment (`segment_position_ids`).
    """
    if segment_ids is not None and cache is not None:
        raise ValueError("segment_ids (packed rows) are for full forwards; decoding with a KV "
                         "cache runs one episode per row (pass segment_ids=None)")
    b, t = input_ids.shape
    if cache is None:
        s, start = t, None
        q_slot = jnp.arange(t)
    else:
        s, start = cache.max_len, cache.index
        q_slot = start + jnp.arange(t)
    if attention_mask is None:
        attention_mask = jnp.ones((b, s), jnp.int32)
    if attention_mask.shape != (b, s):
        raise ValueError(f"attention_mask has shape {attention_mask.shape}, expected {(b, s)} "
                         f"({'[B, cache_len]' if cache is not None else '[B, T]'})")
    key_ok = attention_mask.astype(bool)[:, None, None, :]  # [B, 1, 1, S]
    causal = jnp.arange(s)[None, :] <= q_slot[:, None]  # [T, S]
    mask = key_ok & causal[None, None]
    if segment_ids is not None:
        if segment_ids.shape != (b, t):
            raise ValueError(f"segment_ids has shape {segment_ids.shape}, expected {(b, t)} [B, T]")
        seg = segment_ids.astype(jnp.int32)
        same = (seg[:, :, None] == seg[:, None, :]) & (seg[:, None, :] > 0)  # [B, T, S=T]
        mask = mask & same[:, None]
    # A query with no visible key (a left-padding position) would softmax uniformly over ALL
    # S slots: the full forward's S = T future tokens, a cache's S_max slots (unwritten zeros
    # included), so cached decoding of an all-padding prefill chunk differed from the full
    # forward there. Such a query attends to its own slot instead: the same in both paths.
    own = (jnp.arange(s)[None, :] == q_slot[:, None])[None, None]  # [1, 1, T, S]
    mask = mask | (own & ~mask.any(axis=-1, keepdims=True))
    if position_ids is None and segment_ids is not None:
        position_ids = segment_position_ids(segment_ids)
    if position_ids is None:
        pos = default_position_ids(attention_mask)
        position_ids = pos if cache is None else jax.lax.dynamic_slice_in_dim(pos, start, t, axis=1)
    return mask, position_ids.astype(jnp.int32), start


def attention(
    q: jax.Array,  # [B, T, H, Dh]
    k: jax.Array,  # [B, S, H_kv, Dh] ("bshd") or [B, H_kv, S, Dh] ("bhsd", a KV cache)
    v: jax.Array,  # same layout as k
    mask: jax.Array,  # [B, 1, T, S] bool
    scale: float,
    dropout: Optional[Callable[[jax.Array], jax.Array]] = None,
    impl: str = "xla",
    kv_layout: str = "bshd",
) -> jax.Array:
    """softmax(q k^T * scale + mask) v with grouped KV heads; scores/softmax in float32.

    `mask` may be any boolean mask (padding, causal, and the block-diagonal segment mask of packed
    rows): the cuDNN path hands it to `jax.nn.dot_product_attention`, which applies it as an
    additive bias (no packed-sequence fast path is exposed there, so packing saves padding, not
    masked attention FLOPs).
    impl: "xla" (the einsum below: exact, materialises the [B, H, T, S] scores), "cudnn" (fused
    flash attention through `jax.nn.dot_product_attention`, GPU bf16/fp16 only) or "auto" (that
    function's own choice). The fused paths take no attention dropout: with dropout active the
    einsum path runs. Returns [B, T, H, Dh] in q's dtype.
    """
    if impl != "xla" and dropout is None:
        if kv_layout == "bhsd":
            k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
        out = jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale,
                                           implementation=None if impl == "auto" else impl)
        return out.astype(q.dtype)
    b, t, h, dh = q.shape
    if kv_layout == "bhsd" and dropout is None:
        return _cache_attention(q, k, v, mask, scale)
    kv = {"bshd": "bskd", "bhsd": "bksd"}[kv_layout]
    hkv = k.shape[kv.index("k")]
    g = h // hkv
    qg = q.reshape(b, t, hkv, g, dh)
    scores = jnp.einsum(f"btkgd,{kv}->bkgts", qg, k, preferred_element_type=jnp.float32)
    scores = scores * jnp.float32(scale)
    scores = jnp.where(mask[:, :, None], scores, MASK_VALUE)  # [B, H_kv, G, T, S]
    probs = jax.nn.softmax(scores, axis=-1)
    if dropout is not None:
        probs = dropout(probs)
    out = jnp.einsum(f"bkgts,{kv}->btkgd", probs.astype(v.dtype), v)
    return out.reshape(b, t, h, dh).astype(q.dtype)


def _cache_attention(q: jax.Array,  # [B, T, H, Dh]
                     k: jax.Array,  # [B, H_kv, S, Dh] (a KV cache)
                     v: jax.Array,  # [B, H_kv, S, Dh]
                     mask: jax.Array,  # [B, 1, T, S] bool
                     scale: float) -> jax.Array:
    """`attention` against a head-major KV cache, as matmuls batched over (row, KV head), the two
    leading axes of every operand: the cache is read as it is stored (no transpose, no reshape)
    and each (row, KV head) is one [G·T, Dh] × [Dh, S] and one [G·T, S] × [S, Dh] product, where
    the 5-D einsum had XLA:CPU contract the value cache over its non-minor S axis (attention took
    ~1.4x as long per decoding step on SmolLM2's shapes). Reading the cache through a
    [B·H_kv, S, Dh] reshape instead made XLA:CPU fuse the cache update into both the reshape and
    the decoding loop's carry, so each step copied every layer's cache four times (22 ms of a
    ~90 ms SmolLM2 step, 16 rows). The G query heads of a KV head share its keys (GQA without
    repeating K/V). Same maths and float32 softmax as the einsum path."""
    b, t, h, dh = q.shape
    hkv, s = k.shape[1], k.shape[2]
    g = h // hkv
    qh = q.reshape(b, t, hkv, g, dh).transpose(0, 2, 3, 1, 4).reshape(b, hkv, g * t, dh)
    batch = ((0, 1), (0, 1))
    scores = jax.lax.dot_general(qh, k, (((3,), (3,)), batch),
                                 preferred_element_type=jnp.float32) * jnp.float32(scale)
    m = jnp.broadcast_to(mask[:, :, None], (b, hkv, g, t, s)).reshape(b, hkv, g * t, s)
    probs = jax.nn.softmax(jnp.where(m, scores, MASK_VALUE), axis=-1)  # [B, H_kv, G·T, S]
    out = jax.lax.dot_general(probs.astype(v.dtype), v, (((3,), (2,)), batch))  # [.., G·T, Dh]
    out = out.reshape(b, hkv, g, t, dh).transpose(0, 3, 1, 2, 4).reshape(b, t, h, dh)
    return out.astype(q.dtype)


def attention_dropout(rate: float, deterministic: bool):
    """The probs-dropout callable `attention` takes (call inside a compact module), or None when
    it would be the identity."""
    if deterministic or rate == 0.0:
        return None
    drop = nn.Dropout(rate)
    return lambda probs: drop(probs, deterministic=False)


def update_cache_layer(
    cache_k: jax.Array,  # [B, H_kv, S_max, Dh]
    cache_v: jax.Array,  # [B, H_kv, S_max, Dh]
    k: jax.Array,  # [B, T, H_kv, Dh]
    v: jax.Array,  # [B, T, H_kv, Dh]
    index: jax.Array,  # [] int32
) -> tuple[jax.Array, jax.Array]:
    """Write the new keys/values at slots [index, index + T); returns the caches ("bhsd")."""
    put = lambda cache, new: jax.lax.dynamic_update_slice_in_dim(
        cache, new.transpose(0, 2, 1, 3).astype(cache.dtype), index, axis=2)
    k, v = put(cache_k, k), put(cache_v, v)
    return k, v


def rope_tables(position_ids: jax.Array, inv_freq: np.ndarray) -> tuple[jax.Array, jax.Array]:
    """cos/sin tables [B, T, Dh] for HF rotate-half RoPE (frequencies repeated twice).

    position_ids: [B, T]; inv_freq: [Dh/2] float32.
    """
    freqs = position_ids.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq, jnp.float32)
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x * cos + rotate_half(x) * sin with rotate_half([x1, x2]) = [-x2, x1] (HF convention).

    x: [B, T, H, Dh]; cos, sin: [B, T, Dh]. Computed in float32, returned in x's dtype.
    """
    xf = x.astype(jnp.float32)
    x1, x2 = jnp.split(xf, 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    out = xf * cos[:, :, None, :] + rotated * sin[:, :, None, :]
    return out.astype(x.dtype)


def remat_block(block_cls: type[nn.Module], remat: str) -> type[nn.Module]:
    """Wrap a block class with `nn.remat` under the named policy (a key of `REMAT_POLICIES`)."""
    if remat not in REMAT_POLICIES:
        raise ConfigError(f"remat={remat!r}; expected one of {sorted(REMAT_POLICIES)}")
    if remat == "none":
        return block_cls
    return nn.remat(block_cls, policy=REMAT_POLICIES[remat], prevent_cse=True)


def run_blocks(parent: nn.Module, make_block: Callable[[int, str], nn.Module], num_layers: int,
               prefix: str, scan: bool, x: jax.Array, args: tuple, cache: Optional[KVCache],
               index: Optional[jax.Array]) -> tuple[jax.Array, Optional[tuple]]:
    """x [B, T, d] through `num_layers` blocks `make_block(i, name)(x, *args, layer_cache, index)
    -> (x, (k, v) | None)`; call inside `parent`'s compact method. Sows each block's output.

    scan=False: blocks `{prefix}_{i}`, cache k/v tuples of [B, H_kv, S, Dh].
    scan=True: one block `prefix` under `nn.scan` (params [L, ...], one compiled body; the layer
    index handed to make_block is 0), cache k/v stacked [L, B, H_kv, S, Dh].
    Returns (x, (k, v) or None without a cache).
    """
    if not scan:
        ks, vs = [], []
        for i in range(num_layers):
            layer_cache = None if cache is None else (cache.k[i], cache.v[i])
            x, kv = make_block(i, f"{prefix}_{i}")(x, *args, layer_cache, index)
            parent.sow("intermediates", "block_outputs", x)
            if kv is not None:
                ks.append(kv[0])
                vs.append(kv[1])
        return x, (None if cache is None else (tuple(ks), tuple(vs)))

    def body(block, carry, layer_cache):  # carry [B, T, d]; layer_cache: this layer's (k, v)
        y, kv = block(carry, *args, layer_cache, index)
        return y, (kv, y)

    scanned = nn.scan(body, variable_axes={"params": 0, "intermediates": 0},
                      split_rngs={"params": True, "dropout": True}, length=num_layers)
    xs = None if cache is None else (cache.k, cache.v)
    x, (kv, outs) = scanned(make_block(0, prefix), x, xs)  # outs [L, B, T, d]
    for i in range(num_layers):  # no-op unless `intermediates` is mutable
        parent.sow("intermediates", "block_outputs", outs[i])
    return x, kv


def forward_with_intermediates(model: nn.Module, params, *args, **kwargs):
    """Run `model` and also return its sown intermediates.

    Returns (LMOutput, {"embeddings": [B, T, d], "block_outputs": [L, B, T, d]}).
    """
    out, state = model.apply({"params": params}, *args, mutable=["intermediates"], **kwargs)
    inter = state["intermediates"]
    return out, {"embeddings": inter["embeddings"][0],
                 "block_outputs": jnp.stack(inter["block_outputs"])}


# --------------------------------------------------------------------------- partition rules
def path_str(path: Sequence[Any]) -> str:
    """'/'-joined param path from a jax key path or a tuple of names."""
    parts = []
    for p in path:
        for attr in ("key", "name", "idx"):
            if hasattr(p, attr):
                p = getattr(p, attr)
                break
        parts.append(str(p))
    return "/".join(parts)


def match_partition_rules(rules: Sequence[tuple[str, P]], params) -> Any:
    """Pytree of `PartitionSpec` with the structure of `params`: the first rule whose regex
    `re.search`es the '/'-joined path wins. Raises ValueError naming every unmatched path,
    or a rule whose spec has more axes than the parameter.
    """
    compiled = [(re.compile(rx), spec) for rx, spec in rules]
    unmatched: list[str] = []
    too_long: list[str] = []

    def pick(path, leaf):
        name = path_str(path)
        for rx, spec in compiled:
            if rx.search(name):
                if len(spec) > np.ndim(leaf) and np.ndim(leaf) > 0:
                    too_long.append(f"{name} (ndim {np.ndim(leaf)}) vs {rx.pattern!r} -> {spec}")
                return spec if np.ndim(leaf) > 0 else P()
        unmatched.append(name)
        return None

    specs = jax.tree_util.tree_map_with_path(pick, params)
    if unmatched or too_long:
        msg = []
        if unmatched:
            msg.append("no partition rule matches: " + ", ".join(unmatched))
        if too_long:
            msg.append("partition spec longer than the parameter: " + "; ".join(too_long))
        raise ValueError("; ".join(msg))
    return specs


# --------------------------------------------------------------------------- HF key maps
# A key map: HF state-dict key -> (flax param path tuple, transpose?). Transposes happen only
# here (torch nn.Linear is [out, in], Flax Dense kernel is [in, out]).
KeyMap = Mapping[str, tuple[tuple[str, ...], bool]]


def flat_shapes(params) -> dict[tuple[str, ...], tuple[int, ...]]:
    """{param path tuple: shape} of a (possibly abstract) param tree."""
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params))
    return {k: tuple(v.shape) for k, v in flat.items()}


def params_from_state_dict(
    state_dict: Mapping[str, np.ndarray],
    key_map: KeyMap,
    expected: Mapping[tuple[str, ...], tuple[int, ...]],
    ignored: Callable[[str], bool] = lambda k: False,
    source: str = "state dict",
) -> dict:
    """Build a float32 Flax param dict from an HF state dict via `key_map`.

    Every key of `key_map` must be present with the shape implied by `expected` (after the
    transpose); every state-dict key must be mapped or `ignored`. Otherwise raises
    `CheckpointMismatchError` listing all problems at once.
    """
    missing = sorted(k for k in key_map if k not in state_dict)
    unexpected = sorted(k for k in state_dict if k not in key_map and not ignored(k))
    mismatched: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
    flat: dict[tuple[str, ...], np.ndarray] = {}
    for key, (path, transpose) in key_map.items():
        if key not in state_dict:
            continue
        arr = np.asarray(state_dict[key])
        want = tuple(expected[path])
        want_hf = want[::-1] if transpose else want
        if tuple(arr.shape) != want_hf:
            mismatched[key] = (want_hf, tuple(arr.shape))
            continue
        arr = arr.T if transpose else arr
        flat[path] = np.ascontiguousarray(arr, dtype=np.float32)
    if missing or unexpected or mismatched:
        raise CheckpointMismatchError(missing=missing, unexpected=unexpected,
                                      mismatched=mismatched, source=source)
    return flax.traverse_util.unflatten_dict(flat)


def drop_tied_head(state_dict: dict, head_key: str, embed_key: str, source: str) -> None:
    """Remove a tied LM head from `state_dict` (in place) after checking it equals the embedding.

    A checkpoint whose head differs from the embedding was trained untied; dropping it would
    silently change the model, so that raises `CheckpointMismatchError` instead.
    """
    if head_key not in state_dict or embed_key not in state_dict:
        return
    head, emb = np.asarray(state_dict.pop(head_key)), np.asarray(state_dict[embed_key])
    if head.shape != emb.shape or not np.array_equal(head, emb):
        raise CheckpointMismatchError(
            unexpected=[head_key], source=source,
            note=f"{head_key} differs from {embed_key} but the config has "
                 "tie_word_embeddings=true; set it to false to load an untied head.")


def params_to_state_dict(params, key_map: KeyMap) -> dict[str, np.ndarray]:
    """Inverse of `params_from_state_dict`: {HF key: float32 numpy array} (transposed back)."""
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params))
    known = {path for path, _ in key_map.values()}
    extra = sorted("/".join(p) for p in flat if p not in known)
    missing = sorted("/".join(path) for path, _ in key_map.values() if path not in flat)
    if extra or missing:
        raise CheckpointMismatchError(missing=missing, unexpected=extra, mismatched={},
                                      source="Flax params")
    out = {}
    for key, (path, transpose) in key_map.items():
        arr = np.asarray(jax.device_get(flat[path]))
        out[key] = np.ascontiguousarray(arr.T if transpose else arr)
    return out


def abstract_params(model: nn.Module) -> dict:
    """Param shapes of `model` without allocating them (jax.eval_shape of init)."""
    ids = jnp.zeros((1, 1), jnp.int32)
    variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), ids))
    return variables["params"]


def compute_dtype(name: str):
    """jnp dtype from a config dtype name ('float32', 'bfloat16', 'float16')."""
    try:
        return jnp.dtype(name)
    except TypeError as e:
        raise ConfigError(f"dtype={name!r} is not a dtype name (float32 | bfloat16 | float16)") from e


# HF config.json keys that `to_hf` regenerates (never kept as extras).
HF_REGENERATED = ("model_type", "architectures", "transformers_version", "dtype", "torch_dtype")


def split_hf_extras(d: Mapping[str, Any], consumed: set[str]) -> tuple:
    """config.json entries a config class does not model, as a hashable tuple of (key, json)."""
    return tuple(sorted((k, json.dumps(v)) for k, v in d.items()
                        if k not in consumed and k not in HF_REGENERATED))


def join_hf_extras(extras: tuple) -> dict[str, Any]:
    """Inverse of `split_hf_extras`."""
    return {k: json.loads(v) for k, v in extras}


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> None:
    if value not in choices:
        raise ConfigError(f"{name}={value!r}; expected one of {list(choices)}")


def check_scan_layers(value: Any, key: str = "scan_layers") -> None:
    """`scan_layers` must be a real bool (a string such as 'false' would be truthy)."""
    if not isinstance(value, (bool, np.bool_)):
        raise ConfigError(f"{key}={value!r} ({type(value).__name__}); expected a bool "
                          "(true: blocks under nn.scan, false: unrolled blocks)")


def layer_axis_rules(config, prefix: str, rules: list[tuple[str, P]]) -> list[tuple[str, P]]:
    """A config's partition rules; with `scan_layers` the stacked block params under `prefix/`
    get an unsharded leading layer axis (P(None, *spec)) before the plain rules."""
    if not getattr(config, "scan_layers", False):
        return rules
    stacked = [(rf"^{prefix}/.*(?:{rx})", P(None, *spec)) for rx, spec in rules]
    return stacked + rules
