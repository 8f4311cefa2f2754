"""Per-token ILQL objective (Snell et al. 2022, "Offline RL for Natural Language Generation with
Implicit Language Q Learning"), with exactly the semantics of the upstream `PerTokenIQL.get_loss`
that FMs-at-work trains with (see ../shared/reference/fms_at_work.md §1.3).

Notation (token layout of `fairjax.data.layout`): S state slots, A = S−1 action slots, T tokens,
V vocabulary.  V_t = V(s_t) = vs_all[:, t], V(s_{t+1}) = vs_all[:, t+1]; a_t = tokens[action_idx_t+1];
m_t = 1 − terminals[:, t] (t < S−1; padded slots have terminal 1); N = max(Σ m_t, 1) over the batch;
Q̂_t = clip(min(Q1_targ, Q2_targ)(s_t, a_t)) (stop-gradient).

* Q loss       Σ_i Σ_t m_t (r_t + γ(1−term_{t+1}) sg[V(s_{t+1})] − Q_i(s_t,a_t))² / N     (SUM over heads)
* V loss       Σ_t m_t |τ − 1(Q̂_t < V_t)| (Q̂_t − V_t)² / N                       (expectile τ)
* CQL          Σ_i Σ_t m_t CE(Q_i(s_t,·)/T_cql, a_t) / N                              (SUM over heads)
* AWAC         Σ_j CE(π_j, tok_{j+1}) w_j attn_{j+1} / Σ_j attn_{j+1},  w = exp(β(Q̂−V)) or binary,
               w = transition_weight off the action positions (upstream normalises by ALL non-pad
               next tokens, prompt included; kept for equality - see `fairjax.losses.bc`)
* DM margin    Σ_i Σ_t m_t Σ_a max(Q_i(s_t,a) − Q_i(s_t,a_t) + margin, 0)² / N
* total        w_awac·AWAC + w_v·V + w_q·Q + w_cql·CQL + w_dm·DM

All reductions are float32.  Memory: only the online Q heads need the whole vocabulary (CQL / DM),
and only through three per-position reductions (Q at a_t, log-sum-exp, DM hinge sum): each online
head may be passed as a `fairjax.losses.vocab.VocabScores` computed in vocabulary chunks instead of
[B, A, V] scores, and the policy as per-token CE (`TokenCE`) instead of [B, T, V] logits; the target
Q values may be passed already gathered at a_t ([B, A]). The agent's training path does all three,
so no [B, A, V] or [B, T, V] float32 array is kept for the backward pass.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp

from fairjax.losses.bc import (action_token_weights, action_valid_mask, weighted_ce_nll,
                               weighted_token_nll)
from fairjax.losses.common import (batch_count, batch_sum, gather_positions, gather_tokens,
                                   masked_mean, stats)
from fairjax.losses.vocab import VocabScores, dense_scores


@dataclasses.dataclass(frozen=True)
class ILQLHparams:
    """ILQL hyperparameters (defaults: FMs-at-work `config/hackernews/train_iql.yaml`).

    gamma: discount; tau: expectile; cql_temp: CQL temperature; beta / exp_weights / clip_weight /
    transition_weight: AWAC weights; dm_margin: DM margin; value_min/max: clip of Q̂ (None = off);
    double_q: two Q heads (min for the target); *_weight: loss weights; mc_returns: regress V to
    discounted returns-to-go instead of Q̂.
    """

    gamma: float = 0.99
    tau: float = 0.6
    cql_temp: float = 1.0
    beta: float = 0.0
    exp_weights: bool = True
    clip_weight: Optional[float] = None
    transition_weight: float = 0.0
    dm_margin: float = 0.0
    value_min: Optional[float] = None
    value_max: Optional[float] = None
    double_q: bool = True
    awac_weight: float = 0.0
    v_weight: float = 1.0
    q_weight: float = 1.0
    cql_weight: float = 0.25
    dm_weight: float = 0.0
    mc_returns: bool = False

    def __post_init__(self):
        if not 0.0 <= self.tau <= 1.0:
            raise ValueError(f"ILQLHparams.tau={self.tau}: the expectile must be in [0, 1]")
        if self.cql_temp <= 0:
            raise ValueError(f"ILQLHparams.cql_temp={self.cql_temp}: must be > 0")


# ----------------------------------------------------------------------------- pieces
def select_tokens(tokens: jax.Array,  # [B, T] int
                  action_idxs: jax.Array,  # [B, A] int
                  ) -> jax.Array:
    """a_t = tokens[b, action_idxs[b, t] + 1]  ->  [B, A] (upstream gathers tokens[:, 1:])."""
    return jnp.take_along_axis(tokens[:, 1:], action_idxs.astype(jnp.int32), axis=1)


def clip_values(x: jax.Array, hp: ILQLHparams) -> jax.Array:
    """Clip Q̂ to [value_min, value_max] (either may be None)."""
    if hp.value_min is None and hp.value_max is None:
        return x
    return jnp.clip(x, hp.value_min, hp.value_max)


def downstream_returns(rewards: jax.Array,  # [B, A]
                       gamma: float) -> jax.Array:
    """Discounted returns-to-go G_t = Σ_{k≥t} γ^{k−t} r_k  ->  [B, A] (upstream `get_downstream_rs`)."""
    a = rewards.shape[1]
    k = jnp.arange(a)
    diff = k[None, :] - k[:, None]  # [A, A]: k - t
    disc = jnp.where(diff >= 0, jnp.float32(gamma) ** jnp.maximum(diff, 0).astype(jnp.float32), 0.0)
    return rewards.astype(jnp.float32) @ disc.T


def q_loss(q_sel: Sequence[jax.Array],  # H x [B, A] Q_i(s_t, a_t) per head
           vns: jax.Array,  # [B, A] V(s_{t+1})
           rewards: jax.Array,  # [B, A]
           terminals: jax.Array,  # [B, S]
           gamma: float) -> jax.Array:
    """Σ_i Σ_t m_t (r_t + γ(1−term_{t+1}) sg[V(s_{t+1})] − Q_i)² / N (sum over the H heads)."""
    m = action_valid_mask(terminals)
    target = rewards.astype(jnp.float32) + gamma * (1.0 - terminals[:, 1:].astype(jnp.float32)) * \
        jax.lax.stop_gradient(vns.astype(jnp.float32))
    return sum(masked_mean(jnp.square(target - q.astype(jnp.float32)), m) for q in q_sel)


def expectile_v_loss(vs: jax.Array,  # [B, A] V(s_t)
                     target: jax.Array,  # [B, A] Q̂_t (or returns-to-go); stop-gradient
                     terminals: jax.Array,  # [B, S]
                     tau: float) -> jax.Array:
    """Σ_t m_t [τ·1(Q̂≥V) + (1−τ)·1(Q̂<V)] (Q̂ − V)² / N."""
    m = action_valid_mask(terminals)
    diff = jax.lax.stop_gradient(target.astype(jnp.float32)) - vs.astype(jnp.float32)
    w = jnp.where(diff >= 0, tau, 1.0 - tau)
    return masked_mean(w * jnp.square(diff), m)


def _scores(q, actions: jax.Array, temp: float, margin: Optional[float]) -> VocabScores:
    """[B, A, V] scores (or already reduced `VocabScores`) -> `VocabScores` at `actions`."""
    return q if isinstance(q, VocabScores) else dense_scores(q, actions, temp, margin)


def cql_loss(q_all: Sequence,  # H x [B, A, V] online Q heads over the vocabulary (or VocabScores)
             actions: jax.Array,  # [B, A] int a_t
             terminals: jax.Array,  # [B, S]
             temp: float) -> jax.Array:
    """Σ_i Σ_t m_t CE(Q_i(s_t,·)/temp, a_t) / N (sum over heads; CE over the full vocabulary),
    CE = lse(Q/temp) − Q(a_t)/temp."""
    m = action_valid_mask(terminals)
    total = 0.0
    for q in q_all:
        s = _scores(q, actions, temp, None)
        total = total + masked_mean(s.lse - s.taken / temp, m)
    return total


def dm_loss(q_all: Sequence,  # H x [B, A, V] (or VocabScores with the hinge sum)
            q_sel: Sequence[jax.Array],  # H x [B, A]
            terminals: jax.Array,  # [B, S]
            margin: float) -> jax.Array:
    """Σ_i Σ_t m_t Σ_a max(Q_i(s_t,a) − Q_i(s_t,a_t) + margin, 0)² / N (upstream `get_dm_loss`)."""
    m = action_valid_mask(terminals)

    def head(qa, qs):
        if isinstance(qa, VocabScores):
            if qa.hinge is None:
                raise ValueError("dm_loss: VocabScores computed without the DM hinge (margin=None)")
            return masked_mean(qa.hinge, m)
        hinge = jnp.maximum(qa.astype(jnp.float32) - qs[..., None].astype(jnp.float32) + margin, 0.0)
        return masked_mean(jnp.sum(jnp.square(hinge), axis=-1), m)

    return sum(head(qa, qs) for qa, qs in zip(q_all, q_sel))


def awac_weights(adv: jax.Array,  # [B, A] Q̂ − V (stop-gradient)
                 action_idxs: jax.Array,  # [B, A]
                 terminals: jax.Array,  # [B, S]
                 length: int, hp: ILQLHparams) -> jax.Array:
    """Per-token AWAC weights [B, T] (upstream `get_weights`).

    exp_weights: w = exp(β·adv); else w = β·1[adv>0] + (1−β)·1[adv≤0]; optionally min(w, clip);
    non-action positions get `transition_weight` (also clipped, as upstream clips the whole row).
    """
    adv = jax.lax.stop_gradient(adv.astype(jnp.float32))
    if hp.exp_weights:
        w = jnp.exp(hp.beta * adv)
    else:
        pos = (adv > 0).astype(jnp.float32)
        w = hp.beta * pos + (1.0 - hp.beta) * (1.0 - pos)
    weights = action_token_weights(action_idxs, w, action_valid_mask(terminals), length,
                                   hp.transition_weight)
    if hp.clip_weight is not None:
        weights = jnp.minimum(weights, hp.clip_weight)
    return weights


def _heads(x, y):
    return [x] if y is None else [x, y]


class TokenCE(NamedTuple):
    """Per-token policy cross-entropy [B, T-1] (CE(π_j, tok_{j+1})), computed in vocabulary chunks
    (`fairjax.losses.vocab.lm_token_ce`); stands in for [B, T, V] policy logits."""

    ce: jax.Array


# ----------------------------------------------------------------------------- total
def ilql_loss(vs_all: jax.Array,  # [B, S] V at every state slot
              q1_all: jax.Array,  # [B, A, V] online Q1 over the vocabulary (or VocabScores [B, A])
              q2_all: Optional[jax.Array],  # [B, A, V] online Q2 / VocabScores (None if not double_q)
              target_q1: jax.Array,  # [B, A, V] target Q1, or [B, A] already gathered at a_t
              target_q2: Optional[jax.Array],  # same shape as target_q1 (None if not double_q)
              policy_logits: Optional[jax.Array],  # [B, T, V] logits or TokenCE (None iff awac_weight == 0)
              batch: dict,  # tokens, attn_mask [B,T]; state_idxs [B,S]; action_idxs, rewards [B,A]; terminals [B,S]
              hp: ILQLHparams) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Upstream ILQL loss. Returns (total, metrics): every term and upstream's logs (q1/q2/v
    mean+var, advantage mean/std/min/max, act_weight_avg, token_loss, n_valid), all scalars.
    `ilql_terms` also returns the intermediate arrays."""
    terms = ilql_terms(vs_all, q1_all, q2_all, target_q1, target_q2, policy_logits, batch, hp)
    keys = ("loss", "q_loss", "v_loss", "cql_loss", "dm_loss", "token_loss", "awac_loss", "n_valid",
            "q1_avg", "q1_var", "q2_avg", "q2_var", "v_avg", "v_var", "act_weight_avg",
            "advantage_mean", "advantage_std", "advantage_min", "advantage_max")
    return terms["loss"], {k: terms[k] for k in keys if k in terms}


def ilql_terms(vs_all, q1_all, q2_all, target_q1, target_q2, policy_logits, batch,
               hp: ILQLHparams) -> dict[str, jax.Array]:
    """Same arguments as `ilql_loss`; returns every term, metric and intermediate array
    (vs, vns, q1, q2, target_qs, select_tokens [B, A]; awac_weights [B, T])."""
    tokens, attn_mask = batch["tokens"], batch["attn_mask"]
    action_idxs, rewards, terminals = batch["action_idxs"], batch["rewards"], batch["terminals"]
    if hp.double_q and (q2_all is None or target_q2 is None):
        raise ValueError("ILQLHparams.double_q=True needs q2_all and target_q2")
    if not hp.double_q:
        q2_all = target_q2 = None
    if hp.awac_weight != 0 and policy_logits is None:
        raise ValueError("ILQLHparams.awac_weight != 0 needs policy_logits [B, T, V]")
    b, s = vs_all.shape
    a = action_idxs.shape[1]
    q1_shape = q1_all.taken.shape if isinstance(q1_all, VocabScores) else q1_all.shape
    if a != s - 1 or terminals.shape != (b, s) or q1_shape[:2] != (b, a):
        raise ValueError(f"ILQL shapes: vs_all {vs_all.shape}, q1_all {q1_shape}, action_idxs "
                         f"{action_idxs.shape}, terminals {terminals.shape}; expected A = S-1")

    acts = select_tokens(tokens, action_idxs)  # [B, A]
    m = action_valid_mask(terminals)  # [B, A]
    n = batch_count(jnp.sum(m))
    vs_all = vs_all.astype(jnp.float32)
    vt, vns = vs_all[:, :-1], vs_all[:, 1:]
    # H x VocabScores (no stacking: no extra [B, A, V] copies); dense scores also give the DM hinge
    q_all = [_scores(q, acts, hp.cql_temp, hp.dm_margin) for q in _heads(q1_all, q2_all)]
    q_sel = [q.taken for q in q_all]  # H x [B, A]
    tq = [t if t.ndim == 2 else gather_tokens(t, acts) for t in _heads(target_q1, target_q2)]
    tq_sel = tq[0].astype(jnp.float32)
    for t in tq[1:]:
        tq_sel = jnp.minimum(tq_sel, t.astype(jnp.float32))
    # Clipping min(target) after the gather equals upstream's clip over the vocabulary.
    tq_sel = jax.lax.stop_gradient(clip_values(tq_sel, hp))  # [B, A]

    v_target = downstream_returns(rewards, hp.gamma) if hp.mc_returns else tq_sel
    out: dict[str, jax.Array] = {}
    out["q_loss"] = q_loss(q_sel, vns, rewards, terminals, hp.gamma)
    out["v_loss"] = expectile_v_loss(vt, v_target, terminals, hp.tau)
    out["cql_loss"] = cql_loss(q_all, acts, terminals, hp.cql_temp)
    out["dm_loss"] = dm_loss(q_all, q_sel, terminals, hp.dm_margin)
    adv = tq_sel - jax.lax.stop_gradient(vt)
    weights = awac_weights(adv, action_idxs, terminals, tokens.shape[1], hp)  # [B, T]
    if isinstance(policy_logits, TokenCE):
        out["token_loss"], _ = weighted_ce_nll(policy_logits.ce, attn_mask, weights)
    elif policy_logits is not None:
        out["token_loss"], _ = weighted_token_nll(policy_logits, tokens, attn_mask, weights)
    else:  # policy trunk skipped: upstream uses all-zero logits, so CE = log|V| everywhere and
        # its logged token_loss is log|V|·Σ w·attn' / Σ attn' (a constant, no gradient).
        nxt = attn_mask[:, 1:].astype(jnp.float32)
        out["token_loss"] = (jnp.log(jnp.float32(q_all[0].vocab))
                             * batch_sum(jnp.sum(weights[:, :-1] * nxt))
                             / jnp.maximum(batch_count(jnp.sum(nxt)), 1.0))
    out["awac_loss"] = out["token_loss"]
    out["loss"] = (hp.awac_weight * out["token_loss"] + hp.v_weight * out["v_loss"]
                   + hp.q_weight * out["q_loss"] + hp.cql_weight * out["cql_loss"]
                   + hp.dm_weight * out["dm_loss"])
    out["n_valid"] = n
    for i, name in enumerate(("q1", "q2")[:len(q_sel)]):
        out[f"{name}_avg"] = masked_mean(q_sel[i], m)
        out[f"{name}_var"] = masked_mean(jnp.square(q_sel[i] - out[f"{name}_avg"]), m)
    out["v_avg"] = masked_mean(vt, m)
    out["v_var"] = masked_mean(jnp.square(vt - out["v_avg"]), m)
    act_w = gather_positions(weights, action_idxs.astype(jnp.int32))  # [B, A]
    out["act_weight_avg"] = masked_mean(act_w, m)
    out.update(stats(adv, m, prefix="advantage_"))
    out.update(vs=vt, vns=vns, q1=q_sel[0], target_qs=tq_sel, select_tokens=acts,
               awac_weights=weights)
    if len(q_sel) > 1:
        out["q2"] = q_sel[1]
    return out
