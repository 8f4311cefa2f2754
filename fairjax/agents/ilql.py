"""Per-token ILQL agent: three LM trunks + MLP heads, as FMs-at-work's `PerTokenIQL` builds them.

Param trees (plain dicts):
    params = {"qv": trunk, "heads": {"v", "q1", "q2"}, "policy": LM}         trained by optax
    frozen = {"target": trunk, "target_heads": {"q1", "q2"}}                  Polyak targets
* `qv`: the "qv transformer" read by V, Q1, Q2 (upstream `model`).
* `policy`: upstream `lm_policy` with its tied LM head (`pi` = policy `wte`). With
  `separate_policy=False` there is no policy trunk: the logits come from the qv trunk (upstream).
* `target`: upstream `lm_target`, read (stop-gradient) by the target Q heads; with
  `separate_target=False` there is none and the target heads read the qv trunk (upstream).
* Heads are `fairjax.models.heads.MLPHead` (Dense(2d) → ReLU → Dense(out)); V out 1, Q out |V|.

**Fix vs upstream (documented):** when `awac_weight == 0` upstream never computes the policy (zero
logits) so its parameters get no gradient, yet they sit in the AdamW parameter list; torch skips
grad-less params, so they are unchanged. In optax a zero gradient would still apply weight decay,
so with `awac_weight == 0` (and `train_policy` left at its default) the policy lives in
`frozen["policy"]` instead: it is never computed during training, never decayed, and costs no
optimizer state (2× its size in Adam moments).

Nothing is materialised over the vocabulary during training (`vocab_chunk` > 0, the default): the
online Q heads enter the loss through Q(a_t), the CQL log-sum-exp and the DM hinge sum, computed
in vocabulary chunks with a custom VJP (`fairjax.losses.vocab`), the policy through its per-token
CE likewise, and the target heads only at the taken tokens. `vocab_chunk=0` materialises the
[B, A, V] Q scores and [B, T, V] logits (the reference path; same losses and gradients).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from fairjax.agents.base import Algorithm, loss_view, segment_inputs
from fairjax.agents.registry import Decoding, Objective, config_block, register
from fairjax.errors import ConfigError
from fairjax.io.torch_pickle import load_torch_pickle
from fairjax.io.upstream import split_upstream
from fairjax.losses import vocab as V
from fairjax.losses.common import gather_positions
from fairjax.losses.ilql import ILQLHparams, TokenCE, ilql_loss, select_tokens
from fairjax.io.hf import config_from_hf_dir
from fairjax.models import model_module
from fairjax.models.heads import MLPHead, apply_mlp_head, head_params_from_torch

PyTree = Any
ONLINE_Q = ("q1", "q2")


@dataclasses.dataclass(frozen=True)
class ILQLConfig:
    """Agent options (upstream names in brackets).

    alpha: Polyak rate [alpha]; hard_update_every: full copy every N optimizer steps (None = never);
    separate_policy / separate_target [seperate_*]; detach_v / detach_q / detach_pi: stop the head
    gradient into the trunk; train_policy: None = (awac_weight != 0) (see module docstring);
    head_hidden_mult: MLP head width multiple (2 as upstream); head_dtype: compute dtype of the heads;
    train_dropout: run the trunks with dropout during `loss` (upstream trains in train() mode,
    dropout 0.1; default off = deterministic, the fixture setting); vocab_chunk: vocabulary columns
    per block of the memory-lean head/CE reductions in `loss` (0 = materialise [B, A, V];
    None = `fairjax.losses.vocab.resolve_chunk`: $FAIRJAX_VOCAB_CHUNK or 8192).
    """

    hparams: ILQLHparams = ILQLHparams()
    alpha: float = 0.005
    hard_update_every: Optional[int] = None
    separate_policy: bool = True
    separate_target: bool = True
    detach_v: bool = False
    detach_q: bool = False
    detach_pi: bool = False
    train_policy: Optional[bool] = None
    head_hidden_mult: int = 2
    head_dtype: str = "float32"
    train_dropout: bool = False
    vocab_chunk: Optional[int] = None

    @property
    def policy_trained(self) -> bool:
        return (self.hparams.awac_weight != 0) if self.train_policy is None else self.train_policy

    @property
    def heads(self) -> tuple[str, ...]:
        return ONLINE_Q if self.hparams.double_q else ONLINE_Q[:1]


# ----------------------------------------------------------------------------- heads
def _head_hidden(p, hidden: jax.Array, dtype: str) -> jax.Array:
    """relu(fc_in(hidden)) [..., 2d] in `dtype`, as `MLPHead` computes it."""
    dt = jnp.dtype(dtype)
    return jax.nn.relu(hidden.astype(dt) @ p["fc_in"]["kernel"].astype(dt)
                       + p["fc_in"]["bias"].astype(dt))


def apply_head_at(p, hidden: jax.Array,  # [..., d]
                  tokens: jax.Array,  # [...] int
                  dtype: str = "float32") -> jax.Array:
    """One output entry per position, head(hidden)[..., token] -> [...] float32, without computing
    the other |V|−1 outputs (gathers columns of the output kernel)."""
    return V.linear_columns(_head_hidden(p, hidden, dtype), p["fc_out"]["kernel"],
                            p["fc_out"]["bias"], tokens, dtype=dtype)


def head_scores(p, hidden: jax.Array,  # [B, A, d]
                tokens: jax.Array,  # [B, A] int a_t
                hp: ILQLHparams, dtype: str = "float32",
                chunk: int = V.DEFAULT_CHUNK) -> V.VocabScores:
    """A Q head's `VocabScores` [B, A] (Q(a_t), lse(Q/cql_temp), DM hinge sum) computed in
    vocabulary chunks: no [B, A, V] array is kept for the backward pass."""
    margin = hp.dm_margin
    return V.linear_scores(_head_hidden(p, hidden, dtype), p["fc_out"]["kernel"],
                           p["fc_out"]["bias"], tokens, temp=hp.cql_temp, margin=margin,
                           w_axis=1, chunk=chunk, dtype=dtype)


def apply_heads(heads_params: dict, hidden: jax.Array,  # [B, T, d]
                dtype: str = "float32") -> dict[str, jax.Array]:
    """Apply every head present: 'v' -> [B, T]; 'q1'/'q2' -> [B, T, V] (all float32).

    Works for `params["heads"]` and `frozen["target_heads"]` alike (used by generation)."""
    out = {}
    for name, p in heads_params.items():
        y = apply_mlp_head(p, hidden, dtype)
        out[name] = y[..., 0] if name == "v" else y
    return out


def init_heads(rng: jax.Array, hidden_size: int, vocab_size: int, double_q: bool = True,
               hidden_mult: int = 2) -> dict:
    """Random V/Q1/Q2 heads with torch `nn.Linear`'s default init (U(±1/sqrt(fan_in)))."""
    x = jnp.zeros((1, hidden_size), jnp.float32)
    names = ("v",) + (ONLINE_Q if double_q else ONLINE_Q[:1])
    keys = jax.random.split(rng, len(names))
    return {n: MLPHead(1 if n == "v" else vocab_size, hidden_mult).init(k, x)["params"]
            for n, k in zip(names, keys)}


# ----------------------------------------------------------------------------- params
def _copy(tree: PyTree) -> PyTree:
    return jax.tree.map(lambda x: jnp.array(x, dtype=jnp.float32, copy=True), tree)


def assemble(cfg: ILQLConfig, policy: PyTree, qv: PyTree, target: Optional[PyTree], heads: dict,
             target_heads: Optional[dict] = None) -> tuple[dict, dict]:
    """Place trunks and heads into (params, frozen) for `cfg` (target heads default to copies)."""
    heads = {k: heads[k] for k in ("v",) + cfg.heads}
    params = {"qv": qv, "heads": heads}
    frozen: dict = {"target_heads": _copy({k: heads[k] for k in cfg.heads}
                                          if target_heads is None else
                                          {k: target_heads[k] for k in cfg.heads})}
    if cfg.separate_target:
        frozen["target"] = _copy(qv if target is None else target)
    if cfg.separate_policy:
        (params if cfg.policy_trained else frozen)["policy"] = policy
    return params, frozen


def init_from_bc(cfg: ILQLConfig, policy_params: PyTree, base_params: PyTree, rng: jax.Array,
                 hidden_size: int, vocab_size: int) -> tuple[dict, dict]:
    """FMs-at-work initialisation: policy = converted BC checkpoint; qv and target trunks = the
    base model (copies); V/Q heads random (torch default Linear init); target heads = copies."""
    heads = init_heads(rng, hidden_size, vocab_size, cfg.hparams.double_q, cfg.head_hidden_mult)
    return assemble(cfg, _copy(policy_params), _copy(base_params), None, heads)


def init_from_hf(cfg: ILQLConfig, base_params: PyTree, rng: jax.Array, hidden_size: int,
                 vocab_size: int, policy_params: Optional[PyTree] = None) -> tuple[dict, dict]:
    """All trunks from one base LM (policy too, unless `policy_params` is given)."""
    return init_from_bc(cfg, base_params if policy_params is None else policy_params, base_params,
                        rng, hidden_size, vocab_size)


def init_from_upstream(cfg: ILQLConfig, path, base_hf_dir=None, model_config=None):
    """A full upstream PerTokenIQL `model.pkl` -> (model_config, params, frozen).

    Uses `fairjax.io.torch_pickle.load_torch_pickle` and `fairjax.io.upstream.split_upstream`; the
    trunk config comes from `base_hf_dir/config.json` (or `model_config`)."""
    if model_config is None:
        if base_hf_dir is None:
            raise ValueError(f"init_from_upstream({path}): pass base_hf_dir (for config.json) or model_config")
        model_config = config_from_hf_dir(base_hf_dir)
    parts = split_upstream(load_torch_pickle(path))
    return (model_config,) + params_from_upstream_parts(cfg, parts, model_config)


def params_from_upstream_parts(cfg: ILQLConfig, parts: dict, model_config):
    """Upstream groups {model, lm_policy, lm_target: HF state dicts; v, q, q2, target_q, target_q2:
    head state dicts} -> (params, frozen)."""
    conv = model_module(model_config.kind).params_from_hf
    trunk = {k: conv(parts[k], model_config, source=f"upstream {k}.*")
             for k in ("model", "lm_policy", "lm_target") if parts.get(k)}
    hp = {ours: head_params_from_torch(parts[up], "")
          for ours, up in (("v", "v"), ("q1", "q"), ("q2", "q2"), ("t1", "target_q"),
                           ("t2", "target_q2")) if parts.get(up)}
    heads = {k: hp[k] for k in ("v", "q1", "q2") if k in hp}
    theads = {"q1": hp["t1"], **({"q2": hp["t2"]} if "t2" in hp else {})}
    qv = trunk["model"]
    return assemble(cfg, trunk.get("lm_policy", qv), qv, trunk.get("lm_target"), heads, theads)


def trunks(cfg: ILQLConfig, params: dict, frozen: dict) -> dict[str, PyTree]:
    """The three trunk param trees {'policy', 'qv', 'target'} (shared ones repeated)."""
    qv = params["qv"]
    pol = params.get("policy", frozen.get("policy", qv)) if cfg.separate_policy else qv
    return {"policy": pol, "qv": qv, "target": frozen.get("target", qv)}



def decoding_fields(cfg: ILQLConfig, params: dict, frozen: dict) -> dict:
    """The value-guided decoder's inputs (the fields of `fairjax.generate.Policy`) from ILQL agent
    params (LoRA: merged): trunks in order policy (logits), qv (V), target (target Q), a trunk the
    config shares (separate_policy / separate_target False) given once; roles index them;
    heads = the V head and the target Q heads."""
    tr = trunks(cfg, params, frozen)
    order = ["policy"] + (["qv"] if cfg.separate_policy else []) + \
            (["target"] if cfg.separate_target else [])
    index = {name: i for i, name in enumerate(order)}
    index.setdefault("qv", index["policy"])
    index.setdefault("target", index["qv"])
    return {"trunks": tuple(tr[n] for n in order),
            "roles": (("logits", index["policy"]), ("v", index["qv"]), ("target", index["target"])),
            "heads": {"v": params["heads"]["v"], "target": dict(frozen["target_heads"])},
            "head_dtype": cfg.head_dtype}


# ----------------------------------------------------------------------------- forward
def forward(model: nn.Module, cfg: ILQLConfig, params: dict, frozen: dict, batch: dict, *,
            compute_policy: bool = True, target_full: bool = True,
            dropout_rng: Optional[jax.Array] = None, vocab_chunk: int = 0) -> dict[str, jax.Array]:
    """Run the trunks and heads on a batch.

    batch: tokens, attn_mask [B, T]; state_idxs [B, S]; action_idxs [B, A] (packed rows also
    segment_ids, positions [B, T]: `fairjax.data.packing`).
    Returns float32 arrays: vs_all [B, S]; q1_all, q2_all [B, A, V]; target_q1, target_q2
    ([B, A, V] if target_full else [B, A] at the taken tokens); target_qs_all [B, A, V] (min, if
    target_full); policy_logits [B, T, V] (if compute_policy); hidden states h_qv, h_target
    [B, T, d] (and h_policy when computed); select_tokens [B, A].
    With `vocab_chunk` > 0 (training; needs target_full=False) q1_all / q2_all are
    `VocabScores` [B, A] and the policy comes as `policy_ce`, a `TokenCE` [B, T-1], both
    computed in vocabulary chunks (no [B, A, V] / [B, T, V] arrays).
    """
    lean = vocab_chunk > 0
    if lean and target_full:
        raise ValueError("ilql.forward: vocab_chunk > 0 (chunked heads) needs target_full=False")
    tokens, mask = batch["tokens"], batch["attn_mask"]
    s_idx = batch["state_idxs"].astype(jnp.int32)
    a_idx = batch["action_idxs"].astype(jnp.int32)
    tr = trunks(cfg, params, frozen)
    det = dropout_rng is None
    keys = iter(jax.random.split(dropout_rng, 3)) if not det else None

    def run(p, logits: bool):
        rngs = None if det else {"dropout": next(keys)}
        return model.apply({"params": p}, tokens, mask, compute_logits=logits, deterministic=det,
                           rngs=rngs, **segment_inputs(batch))

    qv_logits = compute_policy and not cfg.separate_policy and not cfg.detach_pi and not lean
    qv_out = run(tr["qv"], qv_logits)
    h = qv_out.hidden_states  # [B, T, d]
    if cfg.separate_target:
        h_t = jax.lax.stop_gradient(run(tr["target"], False).hidden_states)
    else:
        h_t = jax.lax.stop_gradient(h)
    h_s, h_a = gather_positions(h, s_idx), gather_positions(h, a_idx)  # [B, S, d], [B, A, d]
    h_ta = gather_positions(h_t, a_idx)  # [B, A, d]
    dt = cfg.head_dtype
    hd = params["heads"]
    out = {"h_qv": h, "h_target": h_t, "select_tokens": select_tokens(tokens, a_idx)}
    out["vs_all"] = apply_mlp_head(hd["v"], jax.lax.stop_gradient(h_s) if cfg.detach_v else h_s, dt)[..., 0]
    h_aq = jax.lax.stop_gradient(h_a) if cfg.detach_q else h_a
    th = jax.lax.stop_gradient(frozen["target_heads"])
    for name in cfg.heads:
        out[f"{name}_all"] = (head_scores(hd[name], h_aq, out["select_tokens"], cfg.hparams, dt,
                                          vocab_chunk) if lean else apply_mlp_head(hd[name], h_aq, dt))
        out[f"target_{name}"] = (apply_mlp_head(th[name], h_ta, dt) if target_full else
                                 apply_head_at(th[name], h_ta, out["select_tokens"], dt))
    if target_full:
        tq = [out[f"target_{n}"] for n in cfg.heads]
        out["target_qs_all"] = tq[0] if len(tq) == 1 else jnp.minimum(*tq)
    if compute_policy and lean:
        hp_ = run(tr["policy"], False).hidden_states if cfg.separate_policy else h
        h_in = jax.lax.stop_gradient(hp_) if cfg.detach_pi else hp_
        out["h_policy"] = hp_
        out["policy_ce"] = TokenCE(V.lm_token_ce(tr["policy"], h_in, tokens, h_in.dtype,
                                                 vocab_chunk))
    elif compute_policy:
        if cfg.separate_policy:
            pout = run(tr["policy"], not cfg.detach_pi)
            hp_, logits = pout.hidden_states, pout.logits
        else:
            hp_, logits = h, qv_out.logits
        if cfg.detach_pi:  # gradient reaches only pi (the LM head), not the policy trunk
            logits = V.lm_logits_from_hidden(tr["policy"], jax.lax.stop_gradient(hp_))
        out["h_policy"] = hp_
        out["policy_logits"] = logits.astype(jnp.float32)
    return out


# ----------------------------------------------------------------------------- algorithm
def loss_fn(model: nn.Module, cfg: ILQLConfig, params: dict, frozen: dict, batch: dict,
            rng: Optional[jax.Array] = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """ILQL training loss (the policy trunk runs only when awac_weight != 0, as upstream)."""
    hp = cfg.hparams
    out = forward(model, cfg, params, frozen, batch, compute_policy=hp.awac_weight != 0,
                  target_full=False, dropout_rng=rng if cfg.train_dropout else None,
                  vocab_chunk=V.resolve_chunk(cfg.vocab_chunk))
    policy = out.get("policy_ce", out.get("policy_logits"))
    return ilql_loss(out["vs_all"], out["q1_all"], out.get("q2_all"), out["target_q1"],
                     out.get("target_q2"), policy, loss_view(batch), hp)


def online_targets(cfg: ILQLConfig, params: dict) -> dict:
    """The online counterparts of the Polyak-tracked frozen entries."""
    new = {"target_heads": {k: params["heads"][k] for k in cfg.heads}}
    if cfg.separate_target:
        new["target"] = params["qv"]
    return new


def update_frozen(cfg: ILQLConfig, params: dict, frozen: dict, step) -> dict:
    """After optimizer step `step` (1-based): θ_targ ← α·θ + (1−α)·θ_targ for the target heads AND
    the whole target trunk (upstream `soft_update`); then, if `hard_update_every` is set, a full
    copy when step % hard_update_every == 0 (upstream `hard_update`)."""
    new = online_targets(cfg, params)
    old = {k: frozen[k] for k in new}
    upd = optax.incremental_update(new, old, cfg.alpha)
    if cfg.hard_update_every:
        upd = optax.periodic_update(new, upd, jnp.asarray(step), cfg.hard_update_every)
    return {**frozen, **upd}


def make_algorithm(model: nn.Module, cfg: ILQLConfig, init: Any) -> Algorithm:
    """Bundle as an `Algorithm`. `init(rng) -> (params, frozen)` (e.g. a partial of
    `init_from_bc`), or an already built `(params, frozen)` tuple."""
    init_fn = init if callable(init) else (lambda rng: init)
    return Algorithm(
        name="ilql",
        init=init_fn,
        loss=lambda params, frozen, batch, rng: loss_fn(model, cfg, params, frozen, batch, rng),
        update_frozen=lambda params, frozen, step: update_frozen(cfg, params, frozen, step),
        policy=lambda params, frozen: (model, trunks(cfg, params, frozen)["policy"]),
    )


def hparams_from_upstream(ilql: dict, loss_weights: dict) -> ILQLHparams:
    """ILQLHparams from upstream yaml-style dicts (model block + loss weights)."""
    f = lambda d, k, default: default if d.get(k) is None else d[k]  # noqa: E731
    return ILQLHparams(
        gamma=float(f(ilql, "gamma", 1.0)), tau=float(f(ilql, "tau", 0.9)),
        cql_temp=float(f(ilql, "cql_temp", 1.0)), beta=float(f(ilql, "beta", 1.0)),
        exp_weights=bool(f(ilql, "exp_weights", False)), clip_weight=ilql.get("clip_weight"),
        transition_weight=float(f(ilql, "transition_weight", 0.0)),
        dm_margin=float(f(ilql, "dm_margin", 0.0)), value_min=ilql.get("value_min"),
        value_max=ilql.get("value_max"), double_q=bool(f(ilql, "double_q", False)),
        awac_weight=float(f(loss_weights, "awac_weight", 0.0)),
        v_weight=float(f(loss_weights, "v_loss_weight", 0.0)),
        q_weight=float(f(loss_weights, "q_loss_weight", 0.0)),
        cql_weight=float(f(loss_weights, "cql_loss_weight", 0.0)),
        dm_weight=float(f(loss_weights, "dm_loss_weight", 0.0)),
        mc_returns=bool(f(loss_weights, "mc_returns", False)))


def config_from_upstream(ilql: dict, loss_weights: dict, **overrides) -> ILQLConfig:
    """ILQLConfig from upstream's model block (alpha, seperate_*, detach_*) and loss weights."""
    kw = dict(hparams=hparams_from_upstream(ilql, loss_weights),
              alpha=float(ilql.get("alpha", 0.005)),
              separate_policy=bool(ilql.get("seperate_policy", False)),
              separate_target=bool(ilql.get("seperate_target", False)),
              detach_v=bool(ilql.get("detach_v", False)), detach_q=bool(ilql.get("detach_q", False)),
              detach_pi=bool(ilql.get("detach_pi", False)))
    kw.update(overrides)
    return ILQLConfig(**kw)


__all__ = ["ILQLConfig", "apply_head_at", "apply_heads", "head_scores", "assemble", "decoding_fields", "forward",
           "init_from_bc", "init_from_hf", "init_from_upstream", "init_heads", "loss_fn",
           "make_algorithm", "online_targets", "params_from_upstream_parts",
           "trunks", "update_frozen", "config_from_upstream", "hparams_from_upstream"]


# ----------------------------------------------------------------------------- config wiring
def from_config(cfg: Any) -> ILQLConfig:
    """`ILQLConfig` from the `ilql` block: loss fields -> ILQLHparams, agent fields -> ILQLConfig
    (hard_update_every 0 = never); `ilql.generation` is read by decoding."""
    c = cfg.ilql
    if not 0.0 < c.tau < 1.0:
        raise ConfigError(f"config.ilql.tau={c.tau}; the expectile must be in (0, 1)")
    for name in ("gamma", "alpha"):
        if not 0.0 <= c[name] <= 1.0:
            raise ConfigError(f"config.ilql.{name}={c[name]}; expected in [0, 1]")
    if c.cql_temp <= 0:
        raise ConfigError(f"config.ilql.cql_temp={c.cql_temp}; expected > 0")
    return config_block(cfg, "ilql", ILQLConfig, hparams=ILQLHparams, ignore=("generation",),
                        convert={"hard_update_every": lambda n: n or None})


def algorithm_from(module: nn.Module, cfg: ILQLConfig, hidden_size: int, vocab_size: int,
                   policy: Any, base: Any) -> Algorithm:
    """FMs-at-work initialisation (`init_from_bc`) of `policy` and `base`: param trees, or
    `rng -> params` (keyed by fold_in(rng, 1) / (rng, 2); the LoRA form passes adapter inits)."""
    def init(rng):
        pol = policy(jax.random.fold_in(rng, 1)) if callable(policy) else policy
        b = base(jax.random.fold_in(rng, 2)) if callable(base) else base
        return init_from_bc(cfg, pol, b, rng, hidden_size, vocab_size)
    return make_algorithm(module, cfg, init)


def build(cfg: Any, module: nn.Module, model_config, base_params, policy) -> Algorithm:
    return algorithm_from(module, from_config(cfg), model_config.hidden_size,
                          model_config.vocab_size, policy, base_params)


def check_pack(cfg: Any) -> None:
    if cfg.ilql.get("mc_returns", False):
        raise ConfigError("config.data.pack=True with config.ilql.mc_returns=True: Monte-Carlo "
                          "returns are summed along the whole row and would cross episodes; "
                          "set one of them to False")


def eval_variants(cfg: Any) -> str:
    """The pipeline's evaluation systems: the policy trunk alone (β = 0, named bc: with
    awac_weight 0 it is the BC policy) and ilql_b<β> per `pipeline.adv_weights`."""
    weights = [float(w) for w in cfg.pipeline.adv_weights]
    return ",".join(["bc:0"] + [f"ilql_b{w:g}:{w:g}" for w in weights if w > 0])


OBJECTIVE = register(Objective(
    name="ilql", agent_config=from_config, build=build, packable=True, check_pack=check_pack,
    decoding=Decoding(guided=lambda cfg, params, frozen: decoding_fields(from_config(cfg), params,
                                                                           frozen),
                      settings=lambda cfg: cfg.ilql.generation,
                      variants=eval_variants,
                      unguided_untrained=lambda cfg: not cfg.ilql.awac_weight)))
