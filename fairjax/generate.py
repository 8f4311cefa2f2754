"""Batched, jit-compiled decoding for BC policies and ILQL-perturbed policies (FMs-at-work §2).

One compiled program per (policy structure, GenerationConfig, batch shape): prefill the
left-padded prompts into a KV cache per trunk, then a `lax.while_loop` emits one token per step
for every row until each row has produced `</a>` (or one of `GenerationConfig.stop_ids`, e.g. a
chat template's end of turn `<|im_end|>`: `generate_texts` adds the tokenizer's
`end_of_turn_id`) or `max_new_tokens` tokens.

Per-step logits (upstream `IQL_Policy.sample_raw`, reference/fms_at_work.md §2):

    base   = π(·|s) logits with <|pad|> = -inf
    edited = top_p(top_k(base / temperature))                         (`process_logits`)
    A(s,·) = min(Q̂1, Q̂2)(s,·) − V(s)      target Q heads on the target trunk, V on the qv trunk
    adv    = adv_weight · A                  (exp_adv) or log(w·1[A>0] + (1−w)·1[A≤0]) (not exp_adv)
    adv    = min(adv, adv_clip)              (when adv_clip is set), <|pad|> = -inf
    full   = edited·include_logits + adv·include_adv;   a ~ softmax(full)  (argmax for greedy)

so π(a|s) ∝ π_BC(a|s)^{1/T} · exp(β (Q̂(s,a) − V(s))) with β = adv_weight. Returned per row: the
summed log π_full(a), the KL estimate Σ log π_full(a) − log π_base(a) (started at the best-of-n
bound log n − (n−1)/n, 0 for n = 1, as upstream) and the summed advantage Σ A(s,a).

Beam search scores beams by the cumulative log_softmax(full) (no length normalisation, as
upstream `beam_raw`), expands only beam 0 at the first step, and keeps finished beams frozen with
their score. With `num_generations = n` every prompt is decoded n times and the best by
`rerank_adv_weight · adv_sum + rerank_logprob_weight · log_prob` (upstream defaults 1, 0) is kept.

Fixes vs upstream (documented): evaluation generates for every prompt once, in order (upstream
drew prompts with replacement); greedy decoding exists (upstream's `kind: greedy` was rejected by
an assert); ragged prompts are left-padded instead of forcing prompt tokens with +1e7 logits.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
from typing import Any, NamedTuple, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from fairjax.data.layout import bucket_for, prompt_tokens
from fairjax.errors import ConfigError
from fairjax.losses.vocab import lm_logits_from_hidden
from fairjax.models.common import init_cache
from fairjax.models.heads import apply_mlp_head

PyTree = Any
NEG_INF = -jnp.inf
MODES = ("sample", "greedy", "beam")


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
    """Decoding settings (upstream `generation_kwargs` names in brackets).

    max_new_tokens: tokens generated per row, `</a>` included [max_generation_len].
    mode: "sample" | "greedy" | "beam" [kind].  num_beams: beam width [beam_width].
    temperature / top_k (0 = off) / top_p (1.0 = off): `process_logits` of the policy logits.
    num_generations: samples per prompt; the best by the rerank score is returned.
    rerank_adv_weight / rerank_logprob_weight: score = w_adv·Σ A + w_lp·Σ log π [upstream 1, 0].
    adv_weight: β of the ILQL perturbation (0 = plain policy sampling).  exp_adv: β·A (True) or
    the step-function log-weights (False).  adv_clip: upper clip of the perturbation (None = off).
    include_logits / include_adv: which terms enter the sampling logits.
    stop_ids: extra token ids that end a row like `</a>` (e.g. a chat template's end-of-turn id;
    `generate_texts` adds the tokenizer's own, see `with_stop_ids`).
    """

    max_new_tokens: int = 128
    mode: str = "sample"
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    num_beams: int = 1
    num_generations: int = 1
    rerank_adv_weight: float = 1.0
    rerank_logprob_weight: float = 0.0
    adv_weight: float = 0.0
    exp_adv: bool = True
    adv_clip: Optional[float] = None
    include_logits: bool = True
    include_adv: bool = True
    stop_ids: tuple[int, ...] = ()

    def __post_init__(self):
        try:
            stop = tuple(int(i) for i in self.stop_ids)
        except (TypeError, ValueError):
            raise ConfigError(f"stop_ids={self.stop_ids!r}; expected a sequence of token ids") from None
        if any(i < 0 for i in stop):
            raise ConfigError(f"stop_ids={stop}; token ids must be >= 0")
        object.__setattr__(self, "stop_ids", stop)
        if self.mode not in MODES:
            raise ConfigError(f"generation mode={self.mode!r}; expected one of {MODES}")
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens={self.max_new_tokens}; must be >= 1")
        if self.temperature <= 0:
            raise ConfigError(f"temperature={self.temperature}; must be > 0 (use mode='greedy')")
        if self.top_k < 0 or not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"top_k={self.top_k} must be >= 0 and top_p={self.top_p} in (0, 1]")
        if self.num_beams < 1 or self.num_generations < 1:
            raise ConfigError(f"num_beams={self.num_beams} and num_generations="
                              f"{self.num_generations} must be >= 1")
        if not (self.include_logits or self.include_adv):
            raise ConfigError("include_logits and include_adv are both False: nothing to sample from")


class GenerationOutput(NamedTuple):
    """tokens [B, N] int32 (pad after the stop), lengths [B] (tokens emitted, the stop token
    included), finished [B] bool (`</a>` or a stop id emitted), log_prob / kl / adv_sum [B]
    float32."""

    tokens: jax.Array
    lengths: jax.Array
    finished: jax.Array
    log_prob: jax.Array
    kl: jax.Array
    adv_sum: jax.Array


@dataclasses.dataclass(frozen=True)
class Policy:
    """What to decode with. `trunks` are distinct LM param trees; `roles` maps 'logits' (policy),
    and for value-guided decoding (ILQL's `sample_raw`) 'v' (value trunk) and 'target' (target Q
    trunk) to indices into `trunks`; `heads` holds the V head and the target Q heads, or is empty
    (plain LM)."""

    model: nn.Module
    trunks: tuple
    roles: tuple  # ((role, trunk index), ...), hashable
    heads: dict
    head_dtype: str = "float32"

    @property
    def is_value_guided(self) -> bool:
        return "v" in dict(self.roles)

    def cast(self, dtype: str) -> "Policy":
        """A copy with float params stored in `dtype` (e.g. "bfloat16": half the bytes read per
        decoding step, which is memory-bound) and the model/heads computing in it."""
        dt = jnp.dtype(dtype)
        cast = lambda t: jax.tree.map(lambda x: x.astype(dt) if jnp.issubdtype(x.dtype, jnp.floating)
                                      else x, t)
        model = self.model.clone(config=self.model.config.replace(dtype=dt.name))
        return dataclasses.replace(self, model=model, trunks=cast(self.trunks),
                                   heads=cast(self.heads), head_dtype=dt.name)

    @staticmethod
    def lm(model: nn.Module, lm_params: PyTree) -> "Policy":
        return Policy(model, (lm_params,), (("logits", 0),), {})

    @staticmethod
    def guided(model: nn.Module, fields: dict) -> "Policy":
        """A value-guided policy from an objective's `Decoding.guided` fields (trunks, roles with
        'logits', 'v', 'target', heads {'v': V head, 'target': {name: Q head}}, head_dtype)."""
        missing = {"logits", "v", "target"} - set(dict(fields["roles"]))
        if missing:
            raise ValueError(f"value-guided policy: roles {sorted(missing)} missing")
        return Policy(model, **fields)


# ----------------------------------------------------------------------------- logits
def process_logits(logits: jax.Array,  # [R, V] float32
                   temperature: float, top_k: int, top_p: float) -> jax.Array:
    """Upstream `process_logits`: logits / T, then top-k, then top-p (nucleus) masking with -inf.

    top-p keeps the smallest prefix of the sorted distribution whose mass reaches top_p (the token
    that crosses the threshold is kept, as in HF/upstream)."""
    x = logits / jnp.float32(temperature)
    if top_k and top_k < x.shape[-1]:
        kth = jax.lax.top_k(x, top_k)[0][..., -1:]
        x = jnp.where(x < kth, NEG_INF, x)
    if top_p < 1.0:
        order = jnp.argsort(-x, axis=-1)
        sorted_x = jnp.take_along_axis(x, order, axis=-1)
        probs = jax.nn.softmax(sorted_x, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # mass strictly before each sorted token
        drop_sorted = before > top_p
        drop = jnp.zeros_like(drop_sorted).at[
            jnp.arange(x.shape[0])[:, None], order].set(drop_sorted)
        x = jnp.where(drop, NEG_INF, x)
    return x


def advantage_logits(q_min: jax.Array,  # [R, V] min of the target Q heads
                     v: jax.Array,  # [R]
                     cfg: GenerationConfig, adv_weight=None) -> tuple[jax.Array, jax.Array]:
    """(perturbation [R, V], advantage A = Q̂ − V [R, V]) per upstream `sample_raw` step 4."""
    adv = q_min - v[:, None]
    w = jnp.float32(cfg.adv_weight) if adv_weight is None else adv_weight  # [] (may be traced)
    if cfg.exp_adv:
        pert = w * adv
    else:
        pert = jnp.log(jnp.where(adv > 0, w, 1.0 - w))
    if cfg.adv_clip is not None:
        pert = jnp.minimum(pert, jnp.float32(cfg.adv_clip))
    return pert, adv


def step_logits(policy_logits: jax.Array,  # [R, V]
                q_min: Optional[jax.Array],  # [R, V] or None (plain LM)
                v: Optional[jax.Array],  # [R]
                pad_id: int, cfg: GenerationConfig, adv_weight=None
                ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(full sampling logits, base logits, advantage) [R, V] each; pad is -inf in full and base."""
    is_pad = jnp.arange(policy_logits.shape[-1]) == pad_id
    base = jnp.where(is_pad, NEG_INF, policy_logits.astype(jnp.float32))
    full = jnp.zeros_like(base)
    if cfg.include_logits:
        full = full + process_logits(base, cfg.temperature, cfg.top_k, cfg.top_p)
    adv = jnp.zeros_like(base)
    if q_min is not None:
        pert, adv = advantage_logits(q_min, v, cfg, adv_weight)
        if cfg.include_adv:
            full = full + jnp.where(is_pad, NEG_INF, pert)
    if not cfg.include_logits and q_min is None:
        raise ConfigError("include_logits=False needs an ILQL policy (there is no advantage term)")
    return jnp.where(is_pad, NEG_INF, full), base, adv


# ----------------------------------------------------------------------------- decoding
def _heads_at(policy: Policy, hidden: dict, logits: jax.Array):
    """Per-step inputs of `step_logits` from the last hidden states of each trunk."""
    if not policy.is_value_guided:
        return logits, None, None

    roles = dict(policy.roles)
    v = apply_mlp_head(policy.heads["v"], hidden[roles["v"]], policy.head_dtype)[..., 0]
    qs = [apply_mlp_head(p, hidden[roles["target"]], policy.head_dtype)
          for _, p in sorted(policy.heads["target"].items())]
    q_min = qs[0] if len(qs) == 1 else jnp.minimum(qs[0], qs[1])
    return logits, q_min, v


def _run_trunks(policy: Policy, trunks: tuple, ids: jax.Array, mask: jax.Array, caches: tuple):
    """All trunks on `ids` [R, t] with their caches -> (policy logits at the last position [R, V],
    {trunk: last hidden [R, d]}, new caches)."""
    hidden, new_caches = {}, []
    for i, (p, cache) in enumerate(zip(trunks, caches)):
        # Hidden states only: the LM head runs on the last position alone (a prefill never
        # materialises [R, P, V] logits).
        out = policy.model.apply({"params": p}, ids, mask, cache=cache, compute_logits=False)
        hidden[i] = out.hidden_states[:, -1]
        new_caches.append(out.cache)
    logits_idx = dict(policy.roles)["logits"]
    return lm_logits_from_hidden(trunks[logits_idx], hidden[logits_idx]), hidden, tuple(new_caches)


def next_token_logits(policy: Policy, prompt_ids: jax.Array,  # [R, P] left-padded
                      prompt_mask: jax.Array,  # [R, P]
                      cfg: GenerationConfig, pad_id: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(full sampling logits, base logits, advantage) [R, V] for the first generated token, from a
    full forward pass over the prompts (what `generate` samples from at step 0)."""
    caches = tuple(None for _ in policy.trunks)
    _, hidden, _ = _run_trunks(policy, policy.trunks, jnp.asarray(prompt_ids),
                               jnp.asarray(prompt_mask), caches)
    logits = lm_logits_from_hidden(policy.trunks[dict(policy.roles)["logits"]],
                                   hidden[dict(policy.roles)["logits"]])
    return step_logits(*_heads_at(policy, hidden, logits), pad_id, cfg)


SAMPLE_BLOCK = 256  # vocabulary block of `sample_categorical`'s two-level search


def first_argmax(x: jax.Array) -> jax.Array:  # [R, V] -> [R] int32
    """`jnp.argmax(x, -1)` (the first maximal index) as a max and a min-index reduction: two
    plain reductions that XLA's CPU backend vectorises, where argmax's variadic (value, index)
    reduction over a 49k vocabulary took several ms per decoding step."""
    v = x.shape[-1]
    hit = x == jnp.max(x, axis=-1, keepdims=True)
    return jnp.minimum(jnp.min(jnp.where(hit, jnp.arange(v, dtype=jnp.int32), v), axis=-1),
                       v - 1).astype(jnp.int32)


def sample_categorical(key: jax.Array, logits: jax.Array,  # [R, V] float32, -inf = excluded
                       block: int = SAMPLE_BLOCK) -> jax.Array:
    """One draw per row from softmax(logits) by inverting its CDF with ONE uniform per row (what
    torch.multinomial does), instead of `jax.random.categorical`'s Gumbel-max, which draws R x V
    threefry variates and runs an argmax over them every step (~45 ms of a decoding step at
    16 x 49k on a CPU core, more than the LM head).

    Two-level search: the row's unnormalised probabilities p = exp(logits - max) are cut into
    blocks of `block`; a block is chosen by the cumulative block masses, then the token within
    it by the block's own cumulative sum. Floating-point rounding can make a partial sum land on
    a token of zero mass (an excluded one); such a draw (probability ~1e-7) is replaced by the
    row's mode, so an excluded (-inf) token is never returned. Returns [R] int32."""
    r, v = logits.shape
    nb = -(-v // block)
    p = jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True))  # [R, V], 0 where excluded
    pb = jnp.pad(p, ((0, 0), (0, nb * block - v))).reshape(r, nb, block)  # [R, nb, block]
    cum_blocks = jnp.cumsum(pb.sum(-1), axis=-1)  # [R, nb]
    u = jax.random.uniform(key, (r, 1), jnp.float32) * cum_blocks[:, -1:]  # [R, 1] in [0, mass)
    b = jnp.minimum(jnp.sum(cum_blocks <= u, axis=-1), nb - 1)  # [R] chosen block
    before = jnp.where(b > 0, _take(cum_blocks, jnp.maximum(b - 1, 0)), 0.0)  # mass before it
    within = jnp.take_along_axis(pb, b[:, None, None], axis=1)[:, 0]  # [R, block]
    j = jnp.sum(jnp.cumsum(within, axis=-1) <= (u[:, 0] - before)[:, None], axis=-1)
    tok = jnp.minimum(b * block + jnp.minimum(j, block - 1), v - 1).astype(jnp.int32)
    return jnp.where(_take(p, tok) > 0, tok, first_argmax(logits))


def _select_token(full: jax.Array, cfg: GenerationConfig, rng: jax.Array) -> jax.Array:
    if cfg.mode != "sample":  # greedy, and beam search with one beam
        return first_argmax(full)
    return sample_categorical(rng, full)


def _logsumexp(x: jax.Array) -> jax.Array:  # [R, V] -> [R]
    m = jnp.max(x, axis=-1)
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    return m + jnp.log(jnp.sum(jnp.exp(x - m[:, None]), axis=-1))


def _full_is_base(policy: Policy, cfg: GenerationConfig) -> bool:
    """Whether `step_logits`' sampling logits equal its base logits bit for bit (plain LM,
    temperature 1, no top-k/top-p): then log π_full = log π_base and the KL term is 0 without
    a second pass over the vocabulary."""
    return (not policy.is_value_guided and cfg.include_logits and cfg.temperature == 1.0
            and cfg.top_k == 0 and cfg.top_p >= 1.0)


def _take(x: jax.Array, tok: jax.Array) -> jax.Array:  # x [R, V], tok [R] -> [R]
    return jnp.take_along_axis(x, tok[:, None], axis=-1)[:, 0]


def _is_stop(tok: jax.Array, eoa_id: int, stop_ids: tuple[int, ...]) -> jax.Array:  # [R] -> [R]
    stop = tok == eoa_id
    for i in stop_ids:
        stop = stop | (tok == i)
    return stop


def with_stop_ids(cfg: GenerationConfig, tokenizer) -> GenerationConfig:
    """`cfg` with the tokenizer's end-of-turn id (chat templates; `Tokenizer.end_of_turn_id`)
    added to `stop_ids`; unchanged for a tokenizer without one."""
    eot = getattr(tokenizer, "end_of_turn_id", None)
    if eot is None or int(eot) in cfg.stop_ids:
        return cfg
    return dataclasses.replace(cfg, stop_ids=cfg.stop_ids + (int(eot),))


def _decode(policy: Policy, trunks: tuple, heads: dict, prompt_ids: jax.Array,
            prompt_mask: jax.Array, rng: jax.Array, *, cfg: GenerationConfig, eoa_id: int,
            pad_id: int) -> GenerationOutput:
    """Sample/greedy/beam decoding of prompts [R, P] (left-padded). See module docstring."""
    policy = dataclasses.replace(policy, trunks=trunks, heads=heads)
    rows, plen = prompt_ids.shape
    beams = cfg.num_beams if cfg.mode == "beam" else 1
    n_new = cfg.max_new_tokens
    if beams > 1:  # beam b of prompt i sits at row i * beams + b
        prompt_ids = jnp.repeat(prompt_ids, beams, axis=0)
        prompt_mask = jnp.repeat(prompt_mask, beams, axis=0)
    r = prompt_ids.shape[0]
    same = beams == 1 and _full_is_base(policy, cfg)
    mcfg = policy.model.config
    caches = tuple(init_cache(mcfg, r, plen + n_new) for _ in trunks)
    mask = jnp.concatenate([prompt_mask.astype(jnp.int32), jnp.ones((r, n_new), jnp.int32)], 1)
    logits, hidden, caches = _run_trunks(policy, trunks, prompt_ids, mask, caches)
    n_gen = cfg.num_generations
    kl0 = math.log(n_gen) - (n_gen - 1) / n_gen
    state = dict(t=jnp.zeros((), jnp.int32), logits=logits, hidden=hidden, caches=caches,
                 tokens=jnp.full((r, n_new), pad_id, jnp.int32),
                 finished=jnp.zeros((r,), bool), lengths=jnp.zeros((r,), jnp.int32),
                 log_prob=jnp.zeros((r,), jnp.float32), kl=jnp.full((r,), kl0, jnp.float32),
                 adv_sum=jnp.zeros((r,), jnp.float32), score=jnp.zeros((r,), jnp.float32),
                 rng=rng)

    def cond(s):
        return (s["t"] < n_new) & ~jnp.all(s["finished"])

    def body(s):
        full, base, adv = step_logits(*_heads_at(policy, s["hidden"], s["logits"]), pad_id, cfg,
                                      heads.get("adv_weight"))
        rng, key = jax.random.split(s["rng"])
        done = s["finished"]
        if beams == 1:
            # log π(tok) = logit(tok) − logsumexp: no [R, V] log-softmax is materialised.
            tok = jnp.where(done, pad_id, _select_token(full, cfg, key))
            parent = jnp.arange(r)
            lp = jnp.where(done, 0.0, _take(full, tok) - _logsumexp(full))
            lp_base = lp if same else _take(base, tok) - _logsumexp(base)
            score = s["score"] + lp
        else:
            logp_full = jax.nn.log_softmax(full, axis=-1)
            logp_base = jax.nn.log_softmax(base, axis=-1)
            # Finished beams continue only with pad at no cost; top-`beams` over beams x vocab.
            v_size = full.shape[-1]
            cont = jnp.where(done[:, None], jnp.where(jnp.arange(v_size) == pad_id, 0.0, NEG_INF),
                             logp_full)
            cand = (s["score"][:, None] + cont).reshape(rows, beams * v_size)
            first = jnp.arange(beams * v_size) < v_size  # step 0: only beam 0 expands
            cand = jnp.where((s["t"] == 0) & ~first[None], NEG_INF, cand)
            score, flat = jax.lax.top_k(cand, beams)  # [rows, beams] (sorted)
            parent = (jnp.arange(rows)[:, None] * beams + flat // v_size).reshape(r)
            tok = (flat % v_size).reshape(r).astype(jnp.int32)
            score = score.reshape(r)
            done = done[parent]
            lp = jnp.where(done, 0.0, logp_full[parent, tok])
            lp_base, adv = logp_base[parent, tok], adv[parent]
            s = {**s, "caches": tuple(c.take_rows(parent) for c in s["caches"]),  # any layout
                 **{k: s[k][parent] for k in ("tokens", "lengths", "log_prob", "kl", "adv_sum")}}
        live = ~done
        tokens = jax.lax.dynamic_update_slice_in_dim(s["tokens"], tok[:, None], s["t"], axis=1)
        new = dict(
            t=s["t"] + 1, tokens=tokens, rng=rng, score=score,
            finished=done | _is_stop(tok, eoa_id, cfg.stop_ids), lengths=s["lengths"] + live,
            log_prob=s["log_prob"] + lp,
            kl=s["kl"] + (0.0 if same else jnp.where(live, lp - lp_base, 0.0)),
            adv_sum=s["adv_sum"] + jnp.where(live, _take(adv, tok), 0.0))
        logits, hidden, caches = _run_trunks(policy, trunks, tok[:, None], mask, s["caches"])
        return {**new, "logits": logits, "hidden": hidden, "caches": caches}

    s = jax.lax.while_loop(cond, body, state)
    out = GenerationOutput(s["tokens"], s["lengths"], s["finished"], s["log_prob"], s["kl"],
                           s["adv_sum"])
    if beams > 1:  # best beam = beam 0 (top_k sorts the scores)
        out = GenerationOutput(*(x[::beams] for x in out))
    return out


CPU_YNN_ENV = "FAIRJAX_DECODE_CPU_YNN"
CPU_DECODE_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


@functools.lru_cache(maxsize=4)
def decoder_compiler_options(platform: str) -> Optional[dict]:
    """XLA options the decoding loop compiles with on `platform`.

    On the CPU every matmul of a decoding step is skinny (M = rows, e.g. 16 x 768 x 50,263), and
    XLA:CPU's YNNPACK dot fusions stream the weights at 3-5 GB/s there against 8-12 GB/s for its
    Eigen dots (2-core AMD EPYC, docs/performance.md §8): the decoder is compiled with the
    YNNPACK fusions off (training steps, with M = B·T, keep them: they are faster there).
    $FAIRJAX_DECODE_CPU_YNN=1 keeps them for decoding too. None where the installed XLA does not
    know the option, or on other platforms."""
    if platform != "cpu" or os.environ.get(CPU_YNN_ENV, "") == "1":
        return None
    try:
        jax.jit(lambda x: x + 1, compiler_options=CPU_DECODE_OPTIONS).lower(
            jnp.zeros((), jnp.float32)).compile()
    except jax.errors.JaxRuntimeError as e:  # "No such compile option": XLA's own defaults
        if "compile option" not in str(e):
            raise
        return None
    return dict(CPU_DECODE_OPTIONS)


@functools.lru_cache(maxsize=64)
def _compiled(policy_static: Policy, cfg: GenerationConfig, eoa_id: int, pad_id: int, mesh):
    fn = functools.partial(_decode, policy_static, cfg=cfg, eoa_id=eoa_id, pad_id=pad_id)
    platform = jax.default_backend() if mesh is None else mesh.devices.flat[0].platform
    options = decoder_compiler_options(platform)
    if mesh is None:
        return jax.jit(fn, compiler_options=options)
    rows = NamedSharding(mesh, P(("data", "fsdp")))
    rep = NamedSharding(mesh, P())
    return jax.jit(fn, in_shardings=(rep, rep, rows, rows, rep), out_shardings=rows,
                   compiler_options=options)


def generate(policy: Policy, prompt_ids,  # [B, P] int32, left-padded
             prompt_mask,  # [B, P] (1 = real token)
             rng: jax.Array, cfg: GenerationConfig, *, eoa_id: int, pad_id: int,
             mesh: Optional[Mesh] = None) -> GenerationOutput:
    """Decode B left-padded prompts; with `mesh`, rows are sharded over ('data', 'fsdp') and the
    params replicated (B must be divisible by that size). See the module docstring."""
    prompt_ids = jnp.asarray(prompt_ids, jnp.int32)
    prompt_mask = jnp.asarray(prompt_mask, jnp.int32)
    if prompt_ids.ndim != 2 or prompt_ids.shape != prompt_mask.shape:
        raise ValueError(f"prompt_ids {prompt_ids.shape} and prompt_mask {prompt_mask.shape} must "
                         "both be [B, P]")
    if not bool(jnp.all(prompt_mask[:, -1] > 0)):
        raise ValueError("prompts must be left-padded: the last column of prompt_mask must be 1")
    n = cfg.num_generations
    if n > 1:
        prompt_ids, prompt_mask = (jnp.repeat(x, n, axis=0) for x in (prompt_ids, prompt_mask))
    static = dataclasses.replace(policy, trunks=(), heads=None)
    heads = dict(policy.heads)
    if policy.is_value_guided:  # β is an argument, not a constant: one compilation serves every β
        heads["adv_weight"] = jnp.float32(cfg.adv_weight)
        fn = _compiled(static, dataclasses.replace(cfg, adv_weight=0.0), int(eoa_id),
                       int(pad_id), mesh)
    else:
        fn = _compiled(static, cfg, int(eoa_id), int(pad_id), mesh)
    out = fn(policy.trunks, heads, prompt_ids, prompt_mask, rng)
    if n > 1:
        score = cfg.rerank_adv_weight * out.adv_sum + cfg.rerank_logprob_weight * out.log_prob
        best = jnp.argmax(score.reshape(-1, n), axis=-1) + jnp.arange(score.shape[0] // n) * n
        out = GenerationOutput(*(x[best] for x in out))
    return out


# ----------------------------------------------------------------------------- text helper
def left_pad(rows: Sequence[np.ndarray], width: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Left-pad int rows to [len(rows), width] ids and 0/1 mask."""
    ids = np.full((len(rows), width), pad_id, np.int32)
    mask = np.zeros((len(rows), width), np.int32)
    for i, r in enumerate(rows):
        if len(r):
            ids[i, width - len(r):] = r
            mask[i, width - len(r):] = 1
    return ids, mask


def generate_texts(policy: Policy, tokenizer, prompts: Sequence[str], cfg: GenerationConfig, *,
                   rng: jax.Array, batch_size: int = 16, max_prompt_tokens: Optional[int] = None,
                   buckets: Sequence[int] = (64, 128, 256, 512, 1024, 2048),
                   mesh: Optional[Mesh] = None, prompt_ids: Optional[Sequence[Sequence[int]]] = None,
                   stop_id: Optional[int] = None) -> list[dict]:
    """Rewrite every prompt once, in input order.

    Each prompt is laid out as `<s>{prompt}</s>` (`data.layout.prompt_tokens`, trimmed from the
    left to `max_prompt_tokens`, default: what fits the model's positions with max_new_tokens),
    left-padded to a bucket length in fixed-size batches (few compilations). Returns per prompt
    {"prompt", "text", "tokens", "finished", "log_prob", "kl", "adv_sum", "num_new_tokens"}.
    A row ends at `</a>`, at `cfg.stop_ids` or at the tokenizer's `end_of_turn_id`; "text" drops
    the stop token.
    `prompt_ids` (one id list per prompt, e.g. a chat template's) replaces that layout (each is
    trimmed from the left to fit); `stop_id` replaces `</a>` as the token that ends a rewrite.
    """
    cfg = with_stop_ids(cfg, tokenizer)

    limit = policy.model.config.max_positions - cfg.max_new_tokens
    if max_prompt_tokens is not None:
        limit = min(limit, max_prompt_tokens)
    if limit < 2:
        raise ConfigError(f"max_new_tokens={cfg.max_new_tokens} leaves no room for a prompt in "
                          f"{policy.model.config.max_positions} positions")
    if prompt_ids is None:
        ids = [prompt_tokens(tokenizer, p, max_len=limit) for p in prompts]
    else:
        if len(prompt_ids) != len(prompts):
            raise ValueError(f"{len(prompt_ids)} prompt_ids for {len(prompts)} prompts")
        ids = [np.asarray(list(x)[-limit:], np.int32) for x in prompt_ids]
    stop = tokenizer.eoa_id if stop_id is None else int(stop_id)
    results: list[Optional[dict]] = [None] * len(prompts)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # similar lengths share a batch
    keys = jax.random.split(rng, max(1, math.ceil(len(ids) / batch_size)))
    for n_batch, start in enumerate(range(0, len(order), batch_size)):
        idx = order[start:start + batch_size]
        width = bucket_for(max(len(ids[i]) for i in idx), [b for b in buckets if b <= limit] + [limit])
        rows = [ids[i] for i in idx] + [ids[idx[-1]]] * (batch_size - len(idx))  # fixed shape
        p_ids, p_mask = left_pad(rows, width, tokenizer.pad_id)
        out = jax.device_get(generate(policy, p_ids, p_mask, keys[n_batch], cfg,
                                      eoa_id=stop, pad_id=tokenizer.pad_id, mesh=mesh))
        for j, i in enumerate(idx):
            n = int(out.lengths[j])
            toks = [int(t) for t in out.tokens[j, :n]]
            text_toks = toks[:-1] if out.finished[j] else toks
            results[i] = {"prompt": prompts[i], "text": tokenizer.decode(text_toks).strip(),
                          "tokens": toks, "finished": bool(out.finished[j]),
                          "log_prob": float(out.log_prob[j]), "kl": float(out.kl[j]),
                          "adv_sum": float(out.adv_sum[j]), "num_new_tokens": n}
    return results
