"""Online RL with a host-side reward: GRPO, RLOO and PPO as a batch producer + ordinary losses.

Online RL is the generic loop's step on batches that are made from the current policy. A
`Rollout` (the objective's `agents.base.Producer`) on P prompts, G samples each (N = P·G rows,
prompt-major: row p·G + g) makes the step's batch:

    rollout  (device)  `fairjax.generate` (jit, KV cache, rows sharded over the mesh) → completion
                       tokens [N, T]; one jitted forward gives per-token log-probs under the
                       sampling policy (old; skipped when the only update is on-policy, see
                       `needs_old_logps`) and the reference, and (PPO) V(s_t)
    scoring  (host)    texts → `scorer` (a `rewards.Scorer` or any texts → floats callable); an
                       exception or a non-finite score stops the step with a `RewardScoringError`
                       naming the prompt id and the sample
    advantages         GRPO: group-normalised;  RLOO: leave-one-out (k1 KL in the reward);
                       PPO: per-token KL-in-reward + score on `</a>`, GAE, whitened
    batch    (host)    numpy arrays seq, attn, mask, advantages, pad_id [+ old_logps, ref_logps,
                       PPO old_values, returns]; with `epochs` × `minibatches` > 1 the rows of
                       each epoch's minibatches in update order (`Rollout.updates` blocks)

and `online_algorithm`'s `loss(params, frozen, batch, rng)` (GRPO / RLOO / PPO: an ordinary
`Algorithm`) is trained on it by the loop's compiled step, one optimizer update per block
(`train.loop.make_train_step(updates=)`). `OnlineRL.step` is the same rollout + compiled step
without the run machinery (tests, benchmarks).

Completion layout (FMs-at-work): prompts are `<s>{prompt}</s>` (`data.layout.prompt_tokens`),
left-padded to `max_prompt_tokens`; the completion ends with `</a>`; a completion cut by
`max_new_tokens` is scored all the same and counted as unfinished. The mask covers the completion
tokens through `</a>`. Log-probs use the sampling temperature (logits / T, `<|pad|>` excluded, as
the decoder); top-k / top-p are not part of the trained distribution (as trl).

Parameters: `params = {"policy": θ, ["value_head", "value_lm"]}`, `frozen = {["ref"]}`: the
reference is a frozen copy of the initial policy (none when `reference="none"`). With LoRA the
objective goes through the one transformation `agents.lora.loraize` like every other: θ, the value
trunk and the reference copy are adapter sets over one frozen `frozen["base"]` (the reference: a
copy of the fresh adapters, B = 0, i.e. the base with adapters off), the loss is unchanged on the
factored effective trees. The rollout reads the state through the Algorithm's `merged(params,
frozen)` view (`Rollout(view=)`: the full layout, adapters merged; identity without LoRA): the
policy that samples, its old log-probs, the reference's log-probs and the old values are those of
the merged trees, i.e. of the policy that sampled. The state (params, frozen, opt_state, step,
rng) is a pytree: checkpointing it with the data position resumes exactly.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from fairjax.agents.base import Algorithm, identity_state, identity_update
from fairjax.data.layout import prompt_tokens
from fairjax.errors import ConfigError
from fairjax.generate import GenerationConfig, Policy, generate, left_pad, with_stop_ids
from fairjax.losses.common import gather_tokens, masked_mean
from fairjax.losses.grpo import GRPOHParams, group_advantages, grpo_loss_hp, k3_kl
from fairjax.losses.ppo import PPOHParams, gae, ppo_loss, token_rewards, whiten
from fairjax.losses.rloo import RLOOHParams, kl_penalized_rewards, rloo_advantages, rloo_loss_hp
from fairjax.losses.vocab import lm_logits_from_hidden
from fairjax.models.heads import MLPHead
from fairjax.parallel import data_parallel_size, shard_batch
from fairjax.train.loop import make_train_step, stack_micro

PyTree = Any
ALGOS = ("grpo", "rloo", "ppo")
REFERENCES = ("initial", "none")
VALUE_TRUNKS = ("policy", "separate")


class RewardScoringError(RuntimeError):
    """The reward scorer raised or returned a non-finite score for a sample."""


@dataclasses.dataclass(frozen=True)
class OnlineConfig:
    """algo: "grpo" | "rloo" | "ppo"; batch_size: completions per step N (= P prompts × G);
    group_size: G samples per prompt (must divide batch_size);
    max_prompt_tokens / max_new_tokens: prompt width (left-trimmed) and completion length T;
    temperature / top_k / top_p: sampling; epochs × minibatches: optimizer steps per rollout batch
    (trl's num_iterations; PPO epochs); reference: "initial" (frozen initial policy; LoRA: adapters
    off) | "none"; value_trunk (PPO): "policy" (head on the policy trunk) | "separate" (own trunk
    initialised from the policy); grpo / rloo / ppo: the loss options."""

    algo: str = "grpo"
    batch_size: int = 8
    group_size: int = 4
    max_prompt_tokens: int = 64
    max_new_tokens: int = 32
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    epochs: int = 1
    minibatches: int = 1
    reference: str = "initial"
    value_trunk: str = "policy"
    value_hidden_mult: int = 2
    grpo: GRPOHParams = GRPOHParams()
    rloo: RLOOHParams = RLOOHParams()
    ppo: PPOHParams = PPOHParams()

    @property
    def rows(self) -> int:
        return self.batch_size

    @property
    def prompts_per_step(self) -> int:
        return self.batch_size // self.group_size

    @property
    def beta(self) -> float:
        return {"grpo": self.grpo.beta, "rloo": self.rloo.beta, "ppo": self.ppo.beta}[self.algo]

    def validate(self, data_parallel: int = 1, prefix: str = "online",
                 batch_key: Optional[str] = None, hparams_prefix: Optional[str] = None
                 ) -> "OnlineConfig":
        """Raise ConfigError naming the offending key (`prefix`.<field>; the batch size as
        `batch_key`, default `prefix`.batch_size; the loss options as `hparams_prefix`.<field>,
        default `prefix`.<algo>); returns self."""
        batch_key = batch_key or f"{prefix}.batch_size"
        hp_key = hparams_prefix or f"{prefix}.{self.algo}"

        def bad(key, msg):
            raise ConfigError(f"{prefix}.{key}: {msg}")

        if self.algo not in ALGOS:
            bad("algo", f"expected one of {ALGOS}, got {self.algo!r}")
        if self.reference not in REFERENCES:
            bad("reference", f"expected one of {REFERENCES}, got {self.reference!r}")
        if self.value_trunk not in VALUE_TRUNKS:
            bad("value_trunk", f"expected one of {VALUE_TRUNKS}, got {self.value_trunk!r}")
        if self.group_size < 1 or (self.algo == "rloo" and self.group_size < 2):
            bad("group_size", f"{self.group_size}: must be >= 1 (>= 2 for rloo's leave-one-out)")
        if self.algo == "grpo" and self.group_size < 2:
            bad("group_size", "1 gives every completion a zero group advantage; use >= 2")
        if self.batch_size < 1 or self.batch_size % self.group_size:
            bad("group_size", f"{self.group_size} does not divide {batch_key}="
                f"{self.batch_size} (completions per step = prompts × group_size)")
        if self.epochs < 1 or self.minibatches < 1:
            bad("epochs", f"epochs={self.epochs} and minibatches={self.minibatches} must be >= 1")
        if self.rows % self.minibatches:
            bad("minibatches", f"{self.minibatches} does not divide {batch_key}={self.rows}")
        if (self.rows // self.minibatches) % data_parallel:
            bad("minibatches", f"minibatch of {self.rows // self.minibatches} rows is not divisible "
                f"by the {data_parallel} data-parallel devices")
        if self.beta > 0 and self.reference == "none":
            raise ConfigError(f"{hp_key}.beta: {self.beta} > 0 needs a reference policy; set "
                              f"{prefix}.reference='initial' or {hp_key}.beta=0")
        if self.max_prompt_tokens < 2 or self.max_new_tokens < 1:
            bad("max_prompt_tokens", f"max_prompt_tokens={self.max_prompt_tokens} (>= 2) and "
                f"max_new_tokens={self.max_new_tokens} (>= 1)")
        return self

    def generation(self) -> GenerationConfig:
        return GenerationConfig(max_new_tokens=self.max_new_tokens, mode="sample",
                                temperature=self.temperature, top_k=self.top_k, top_p=self.top_p)


# ----------------------------------------------------------------------------- parameters
@dataclasses.dataclass(frozen=True)
class PolicyParts:
    """How the state's full-layout trees map to LMs (`model` runs `params["policy"]`; under
    `agents.lora.loraize` it is `models.lora.Factored` and the trees are effective ones)."""

    model: nn.Module
    reference: bool = True  # False: no reference LM (OnlineConfig.reference="none")

    def policy_lm(self, params: PyTree, frozen: PyTree) -> PyTree:
        return params["policy"]

    def ref_lm(self, params: PyTree, frozen: PyTree) -> Optional[PyTree]:
        return frozen["ref"] if self.reference else None


def init_params(parts: PolicyParts, cfg: OnlineConfig, policy: PyTree, rng: jax.Array
                ) -> tuple[PyTree, PyTree]:
    """(params, frozen) from the initial policy tree (under `loraize`: its adapter set): the
    reference and PPO's separate value trunk start as copies of it."""
    params: dict = {"policy": policy}
    frozen: dict = {}
    if cfg.reference == "initial":
        frozen["ref"] = jax.tree.map(jnp.copy, policy)
    if cfg.algo == "ppo":
        if cfg.value_trunk == "separate":
            params["value_lm"] = jax.tree.map(jnp.copy, policy)
        d = parts.model.config.hidden_size
        head = MLPHead(1, cfg.value_hidden_mult)
        params["value_head"] = head.init(rng, jnp.zeros((1, d)))["params"]
    return params, frozen


# ----------------------------------------------------------------------------- forward
def completion_forward(model: nn.Module, lm: PyTree, seq: jax.Array,  # [N, Lp + T]
                       attn: jax.Array,  # [N, Lp + T]
                       plen: int, temperature: float, pad_id: int
                       ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(log-probs [N, T], entropy [N, T], hidden [N, T, d]) of the completion tokens seq[:, plen:]
    under softmax(logits / temperature) with `<|pad|>` excluded; hidden = the state predicting
    each completion token (what V(s_t) reads)."""
    # the LM head runs on the completion positions only (the prompt's [N, Lp, V] is never built)
    hidden = model.apply({"params": lm}, seq, attn, compute_logits=False).hidden_states
    hidden = hidden[:, plen - 1:-1]  # [N, T, d]: the states that predict the completion tokens
    logits = lm_logits_from_hidden(lm, hidden) / temperature  # [N, T, V] float32
    logits = logits.at[..., pad_id].set(-1e9)  # finite: pad rows after `</a>` stay NaN-free
    logp_all = jax.nn.log_softmax(logits, axis=-1)
    comp = seq[:, plen:]
    logps = jnp.where(comp == pad_id, 0.0, gather_tokens(logp_all, comp))  # [N, T]
    entropy = -jnp.sum(jnp.exp(logp_all) * logp_all, axis=-1)  # [N, T]
    return logps, entropy, hidden


def values_of(parts: PolicyParts, cfg: OnlineConfig, params: PyTree, frozen: PyTree,
              seq, attn, plen: int, hidden_policy: jax.Array) -> jax.Array:
    """V(s_t) [N, T] from the value head on the policy trunk's or the value trunk's states."""
    hidden = hidden_policy
    if cfg.value_trunk == "separate":
        hidden = parts.model.apply({"params": params["value_lm"]}, seq, attn,
                                   compute_logits=False).hidden_states[:, plen - 1:-1]
    head = MLPHead(1, cfg.value_hidden_mult)
    return head.apply({"params": params["value_head"]}, hidden)[..., 0]


def needs_old_logps(cfg: OnlineConfig) -> bool:
    """False when the sampling policy's log-probs equal stop_gradient(current) at the only update
    (one epoch, one minibatch, no PPO value targets, no RLOO KL in the reward): the rollout then
    skips that forward pass, as trl does with num_iterations = 1."""
    return (cfg.algo == "ppo" or cfg.epochs * cfg.minibatches > 1
            or (cfg.algo == "rloo" and cfg.rloo.beta > 0))


def _rollout_stats(parts, cfg, pad_id, params, frozen, seq, attn, plen):
    """jit body: old log-probs (or None, see `needs_old_logps`), reference log-probs (or None),
    old values (PPO, else None)."""
    lp = vals = ref_lp = None
    if needs_old_logps(cfg):
        lp, _, hid = completion_forward(parts.model, parts.policy_lm(params, frozen), seq, attn,
                                        plen, cfg.temperature, pad_id)
        if cfg.algo == "ppo":
            vals = values_of(parts, cfg, params, frozen, seq, attn, plen, hid)
    ref = parts.ref_lm(params, frozen)
    if ref is not None:
        ref_lp = completion_forward(parts.model, ref, seq, attn, plen, cfg.temperature, pad_id)[0]
    return lp, ref_lp, vals


def loss_fn(parts: PolicyParts, cfg: OnlineConfig, pad_id: int, params: PyTree, frozen: PyTree,
            mb: dict, plen: int) -> tuple[jax.Array, dict]:
    """The objective of `cfg.algo` on a minibatch of rollout rows (keys of a `Rollout` batch)."""
    seq, attn, mask = mb["seq"], mb["attn"], mb["mask"]
    lp, ent, hid = completion_forward(parts.model, parts.policy_lm(params, frozen), seq, attn,
                                      plen, cfg.temperature, pad_id)
    ref = mb.get("ref_logps")
    old = mb["old_logps"] if "old_logps" in mb else jax.lax.stop_gradient(lp)
    if cfg.algo == "grpo":
        loss, m = grpo_loss_hp(lp, old, ref, mb["advantages"], mask, cfg.grpo)
    elif cfg.algo == "rloo":
        loss, m = rloo_loss_hp(lp, old, mb["advantages"], mask, cfg.rloo, ref)
    else:
        v = values_of(parts, cfg, params, frozen, seq, attn, plen, hid)
        p = cfg.ppo
        loss, m = ppo_loss(lp, mb["old_logps"], v, mb["old_values"], mb["advantages"],
                           mb["returns"], mask, epsilon=p.epsilon, value_clip=p.value_clip,
                           vf_coef=p.vf_coef)
    if ref is not None:  # one KL metric for every algorithm: per-token k3 to the reference
        m["kl"] = masked_mean(k3_kl(jax.lax.stop_gradient(lp), ref), mask)
    m["entropy"] = masked_mean(jax.lax.stop_gradient(ent), mask)
    return loss, m


# ----------------------------------------------------------------------------- scoring
def score_completions(scorer: Union[Callable, Any], texts: Sequence[str],
                      prompt_ids: Sequence[Any], group_size: int,
                      references: Optional[Sequence[str]] = None) -> np.ndarray:
    """texts [N] → rewards [N] float64 on the host. `scorer` has `score_texts` or is callable; a
    scorer with `needs_reference` (content preservation, `rewards.registry`) also gets the
    original posting of each row (`references` [N/G], one per prompt). An exception or a
    non-finite score raises `RewardScoringError` naming the prompt id and the sample (the failing
    sample is found by rescoring one text at a time)."""
    base = scorer.score_texts if hasattr(scorer, "score_texts") else scorer
    name = getattr(scorer, "name", getattr(base, "__name__", type(scorer).__name__))
    if getattr(scorer, "needs_reference", False):
        if references is None:
            raise RewardScoringError(f"reward scorer {name} needs the original posting of each "
                                     "prompt: pass references= to the rollout")
        refs = [references[i // group_size] for i in range(len(texts))]
        fn = lambda idx: base([texts[i] for i in idx], [refs[i] for i in idx])  # noqa: E731
    else:
        fn = lambda idx: base([texts[i] for i in idx])  # noqa: E731

    def where(i):
        return (f"prompt {prompt_ids[i // group_size]!r}, sample {i % group_size} (row {i}): "
                f"{texts[i][:200]!r}")

    try:
        r = np.asarray(fn(range(len(texts))), dtype=np.float64).reshape(-1)
    except Exception as batch_exc:  # locate the sample
        for i in range(len(texts)):
            try:
                fn([i])
            except Exception as exc:
                raise RewardScoringError(f"reward scorer {name} failed on {where(i)}: "
                                         f"{type(exc).__name__}: {exc}") from exc
        raise RewardScoringError(f"reward scorer {name} failed on the batch of {len(texts)} "
                                 f"completions: {batch_exc}") from batch_exc
    if r.shape != (len(texts),):
        raise RewardScoringError(f"reward scorer {name} returned shape {r.shape} for "
                                 f"{len(texts)} completions")
    bad = np.flatnonzero(~np.isfinite(r))
    if bad.size:
        raise RewardScoringError(f"reward scorer {name} returned {r[bad[0]]} for {where(bad[0])}"
                                 f" ({bad.size} non-finite scores in the batch)")
    return r


# ----------------------------------------------------------------------------- the objective
def online_algorithm(parts: PolicyParts, cfg: OnlineConfig,
                     init: Optional[Callable[[jax.Array], tuple[PyTree, PyTree]]] = None
                     ) -> Algorithm:
    """The objective of `cfg.algo` as an ordinary `Algorithm`: `loss(params, frozen, batch, rng)`
    on a rollout batch of `Rollout` (keys: seq, attn, mask, advantages, pad_id, and as the
    algorithm needs old_logps, ref_logps, old_values, returns); `init` as the caller builds it."""
    parts = dataclasses.replace(parts, reference=cfg.reference == "initial")
    plen = cfg.max_prompt_tokens

    def loss(params, frozen, batch, rng):
        del rng  # deterministic forward (no dropout in the rollout's distribution either)
        return loss_fn(parts, cfg, batch["pad_id"][0], params, frozen, batch, plen)

    def no_init(rng):
        raise ValueError("online_algorithm: built without init (OnlineRL.init_state builds the "
                         "state)")

    return Algorithm(name=cfg.algo, init=init or no_init, loss=loss,
                     update_frozen=identity_update,
                     policy=lambda p, f: (parts.model, parts.policy_lm(p, f)))


# ----------------------------------------------------------------------------- the producer
# logged as the mean over the step's updates (the other loss metrics: the first or last update)
_MEAN_KEYS = ("clip_ratio/low", "clip_ratio/high", "clip_ratio/region", "ratio_mean",
              "value_loss", "policy_loss")


class Rollout:
    """Rollout → score → advantages: the batch producer of online RL (module doc). Calling it
    on a train state and P prompts returns the step's batch, a dict of numpy arrays of
    `updates` × (N / minibatches) rows (the epochs' minibatches, in update order) that
    `online_algorithm`'s loss trains on, and host info for `summarize`. `tokenizer` needs
    `decode`, `eoa_id`, `pad_id`. `view(params, frozen) -> (params, frozen)`: the state in the
    full layout `parts` reads, the trained Algorithm's `merged` (LoRA: adapters merged into the
    base, `agents.lora.loraize`; None: the state as it is); `parts.model` is the plain LM."""

    def __init__(self, parts: PolicyParts, cfg: OnlineConfig, tokenizer, scorer,
                 mesh: Optional[Mesh] = None,
                 view: Optional[Callable[[PyTree, PyTree], tuple[PyTree, PyTree]]] = None):
        dp = 1 if mesh is None else data_parallel_size(mesh)
        self.cfg = cfg.validate(dp)
        parts = dataclasses.replace(parts, reference=cfg.reference == "initial")
        self.parts, self.tok, self.scorer, self.mesh = parts, tokenizer, scorer, mesh
        self.pad_id, self.eoa_id = int(tokenizer.pad_id), int(tokenizer.eoa_id)
        plen = cfg.max_prompt_tokens
        view = identity_state if view is None else view
        # the merges happen inside the jitted functions: only the sampling policy's merged tree
        # outlives a call (generation); the reference's / value trunk's are temporaries. The
        # decoder takes replicated params: an fsdp-sharded policy is gathered for it.
        rep = None if mesh is None else NamedSharding(mesh, P())
        if view is identity_state:
            self._policy_lm = (parts.policy_lm if rep is None else
                               lambda p, f: jax.device_put(parts.policy_lm(p, f), rep))
        else:
            self._policy_lm = jax.jit(lambda p, f: parts.policy_lm(*view(p, f)),
                                      out_shardings=rep)
        stats = lambda p, f, s, a: _rollout_stats(parts, cfg, self.pad_id, *view(p, f), s, a, plen)  # noqa: E731
        self._stats = jax.jit(stats)
        self._ppo_targets = jax.jit(self._ppo_targets_fn)

    @property
    def updates(self) -> int:
        """Optimizer updates per rollout batch: epochs × minibatches."""
        return self.cfg.epochs * self.cfg.minibatches

    def _rows(self, x):
        if self.mesh is None:
            return jnp.asarray(x)
        return jax.device_put(jnp.asarray(x), NamedSharding(self.mesh, P(("data", "fsdp"))))

    def _ppo_targets_fn(self, scores, old_lp, ref_lp, values, mask):
        p = self.cfg.ppo
        ref = old_lp if ref_lp is None else ref_lp
        r = token_rewards(scores, old_lp, ref, mask, p.beta)
        adv, ret = gae(r, values, mask, p.gamma, p.lam)
        return (whiten(adv, mask) if p.whiten_advantages else adv), ret

    def encode_prompts(self, prompts: Sequence[str]) -> list[np.ndarray]:
        """`<s>{prompt}</s>` ids per prompt, trimmed from the left to `max_prompt_tokens`."""
        return [prompt_tokens(self.tok, p, max_len=self.cfg.max_prompt_tokens) for p in prompts]

    def __call__(self, state: dict, prompts: Sequence[np.ndarray],  # P rows of prompt token ids
                 prompt_ids: Optional[Sequence[Any]] = None,
                 references: Optional[Sequence[str]] = None) -> tuple[dict, dict]:
        """(batch, info) of one rollout with `state`'s policy; `references`: the original text
        of each prompt (for scorers that need one). The sampling key is fold_in(state["rng"],
        state["step"]) (split into decoding and minibatch-order keys), so a restored state
        samples again what it sampled before."""
        cfg, G = self.cfg, self.cfg.group_size
        if len(prompts) != cfg.prompts_per_step:
            raise ValueError(f"step got {len(prompts)} prompts; online.batch_size / group_size = "
                             f"{cfg.prompts_per_step}")
        prompt_ids = list(range(len(prompts))) if prompt_ids is None else list(prompt_ids)
        t0 = time.perf_counter()
        k_gen, k_perm = jax.random.split(jax.random.fold_in(state["rng"], state["step"]))
        p_ids, p_mask = left_pad([np.asarray(p)[-cfg.max_prompt_tokens:] for p in prompts],
                                 cfg.max_prompt_tokens, self.pad_id)
        p_ids, p_mask = np.repeat(p_ids, G, 0), np.repeat(p_mask, G, 0)  # row p·G + g
        params, frozen = state["params"], state["frozen"]
        pol = Policy.lm(self.parts.model, self._policy_lm(params, frozen))
        out = generate(pol, p_ids, p_mask, k_gen, with_stop_ids(cfg.generation(), self.tok),
                       eoa_id=self.eoa_id, pad_id=self.pad_id, mesh=self.mesh)
        tokens, finished = np.asarray(out.tokens), np.asarray(out.finished)
        lengths = np.asarray(out.lengths)
        mask = (np.arange(cfg.max_new_tokens)[None] < lengths[:, None]).astype(np.float32)
        seq = np.concatenate([p_ids, tokens], 1).astype(np.int32)
        attn = np.concatenate([p_mask.astype(np.float32), mask], 1)
        mask_d = self._rows(mask)
        old_lp, ref_lp, old_v = self._stats(params, frozen, self._rows(seq), self._rows(attn))
        jax.block_until_ready((old_lp, ref_lp))
        t1 = time.perf_counter()

        texts = [self.tok.decode([int(t) for t in tokens[i, :lengths[i] - int(finished[i])]])
                 for i in range(len(lengths))]
        rewards = score_completions(self.scorer, texts, prompt_ids, G, references)
        t2 = time.perf_counter()

        n = cfg.rows
        batch = {"seq": seq, "attn": attn, "mask": mask,
                 "pad_id": np.full((n,), self.pad_id, np.int32)}
        if old_lp is not None:
            batch["old_logps"] = np.asarray(old_lp)
        if ref_lp is not None:
            batch["ref_logps"] = np.asarray(ref_lp)
        r = jnp.asarray(rewards, jnp.float32)
        if cfg.algo == "grpo":
            adv = group_advantages(r, G, cfg.grpo.scale_rewards)
        elif cfg.algo == "rloo":
            if cfg.rloo.beta:
                r = kl_penalized_rewards(r, old_lp, ref_lp, mask_d, cfg.rloo.beta)
            adv = rloo_advantages(r, G, cfg.rloo.normalize_advantages)
        else:
            adv, returns = self._ppo_targets(r, old_lp, ref_lp, old_v, mask_d)
            batch["returns"], batch["old_values"] = np.asarray(returns), np.asarray(old_v)
        adv = np.asarray(adv)
        batch["advantages"] = adv
        if self.updates > 1:  # epoch e's minibatches: a permutation of the rows (M > 1), in order
            orders = [np.arange(n) if cfg.minibatches == 1 else
                      np.asarray(jax.random.permutation(jax.random.fold_in(k_perm, e), n))
                      for e in range(cfg.epochs)]
            idx = np.concatenate(orders)
            batch = {k: v[idx] for k, v in batch.items()}
        t3 = time.perf_counter()

        n_tok = float(mask.sum())  # generated (completion) tokens, through `</a>`
        seq_tok = float(p_mask.sum()) + n_tok  # prompt + completion tokens of the N rows
        metrics = {"reward/mean": float(rewards.mean()), "reward/std": float(rewards.std()),
                   "completion_length": float(lengths.mean()), "finished": float(finished.mean()),
                   "time/rollout": t1 - t0, "time/scoring": t3 - t1,  # scoring + advantages
                   "rollout_tokens_per_s": n_tok / max(t1 - t0, 1e-9), "tokens": seq_tok}
        record = {"texts": texts, "rewards": rewards, "advantages": adv, "finished": finished,
                  "lengths": lengths, "prompt_ids": [prompt_ids[i // G] for i in range(n)]}
        return batch, {"metrics": metrics, "record": record, "completion_tokens": n_tok}

    def summarize(self, metrics: dict, info: dict, update_seconds: float) -> dict:
        """The logged metrics of a step (docs/online_rl.md "Logged metrics"): the rollout's, and
        of the step's updates (`metrics`, host numpy, [updates] or scalars) the sampling policy's
        entropy / KL / ratio (first update), loss and grad_norm (last), `_MEAN_KEYS` (mean).
        Throughput: generated tokens per rollout second; trained completion tokens (each epoch
        passes over every row once) per update second; the rows' prompt + completion tokens
        (`tokens`, what the generic loop's tokens_per_s counts for offline objectives) per
        rollout + scoring + update second."""
        per = {k: np.asarray(v, np.float64).reshape(-1) for k, v in metrics.items()}
        out = dict(info["metrics"])
        total = out["time/rollout"] + out["time/scoring"] + update_seconds
        out.update({
            "time/update": update_seconds,
            "update_tokens_per_s": info["completion_tokens"] * self.cfg.epochs
            / max(update_seconds, 1e-9),
            "tokens_per_s": out["tokens"] / max(total, 1e-9),
            "entropy": float(per["entropy"][0]),  # of the sampling policy (first update)
            "loss": float(per["loss"][-1]), "grad_norm": float(per["grad_norm"][-1]),
            "updates": float(self.updates),
            "ratio_mean/first": float(per["ratio_mean"][0]),  # on-policy: 1
            "finite": float(np.all(per["finite"] > 0)),
        })
        out.update({k: float(np.mean(per[k])) for k in _MEAN_KEYS if k in per})
        if "kl" in per:  # KL of the sampling policy to the reference (first update, on-policy)
            out["kl"] = float(per["kl"][0])
        return out


# ----------------------------------------------------------------------------- the step
class OnlineRL:
    """One online RL step without the run machinery (tests, benchmarks): `Rollout` makes the
    batch, the generic loop's compiled step (`train.loop.make_train_step`, `updates` =
    epochs × minibatches) trains the objective's loss on it: what `python -m fairjax.train`
    does each step. `optimizer` is an optax transformation of `params`. `algorithm`: the
    objective to train, e.g. its LoRA form (`agents.lora.loraize` of `online_algorithm`; the
    rollout reads its `merged` view, `init_state(None, rng)` its `init`); None:
    `online_algorithm(parts, cfg)` on the policy tree given to `init_state`."""

    def __init__(self, parts: PolicyParts, cfg: OnlineConfig, tokenizer, scorer,
                 optimizer: optax.GradientTransformation, mesh: Optional[Mesh] = None,
                 algorithm: Optional[Algorithm] = None):
        view = None if algorithm is None else algorithm.merged
        self.rollout = Rollout(parts, cfg, tokenizer, scorer, mesh, view=view)
        self.cfg, self.parts, self.opt, self.mesh = self.rollout.cfg, self.rollout.parts, optimizer, mesh
        self.tok, self.scorer = tokenizer, scorer
        self.algorithm = algorithm or online_algorithm(self.parts, self.cfg)
        # no donation: a non-finite step hands back the state it was given
        self._update = jax.jit(make_train_step(self.algorithm, optimizer, check_finite=True,
                                               updates=self.rollout.updates))

    def init_state(self, policy: Optional[PyTree], rng: jax.Array) -> dict:
        """The train state from the initial policy tree (`init_params`), or with `policy=None`
        from the objective's own `init` (e.g. LoRA adapters over the frozen base)."""
        k_init, k_roll = jax.random.split(rng)
        if policy is None:
            params, frozen = self.algorithm.init(k_init)
        else:
            params, frozen = init_params(self.parts, self.cfg, policy, k_init)
        state = {"params": params, "frozen": frozen, "opt_state": self.opt.init(params),
                 "step": jnp.zeros((), jnp.int32), "rng": k_roll}
        if self.mesh is not None:
            state = jax.device_put(state, NamedSharding(self.mesh, P()))
        return state

    def encode_prompts(self, prompts: Sequence[str]) -> list[np.ndarray]:
        return self.rollout.encode_prompts(prompts)

    def device_batch(self, batch: dict) -> dict:
        """The rollout batch in the compiled step's layout ([1, N] or [updates, 1, N / M])."""
        updates = self.rollout.updates
        stacked = stack_micro(batch, 1, updates)
        if self.mesh is None:
            return {k: jnp.asarray(v) for k, v in stacked.items()}
        return shard_batch(stacked, self.mesh, leading_unsharded=1 if updates == 1 else 2)

    def step(self, state: dict, prompts: Sequence[np.ndarray],  # P rows of prompt token ids
             prompt_ids: Optional[Sequence[Any]] = None,
             references: Optional[Sequence[str]] = None) -> tuple[dict, dict, dict]:
        """One rollout + update; `references`: the original text of each prompt (for scorers
        that need one). Returns (new state, metrics of floats, rollout record with
        texts/rewards/advantages per row for logging); a non-finite update is not applied (the
        state passed in comes back, metrics["finite"] = 0)."""
        batch, info = self.rollout(state, prompts, prompt_ids, references)
        t = time.perf_counter()
        new_state, m = self._update(state, self.device_batch(batch))
        m = jax.device_get(m)
        jax.block_until_ready(new_state["params"])
        metrics = self.rollout.summarize(m, info, time.perf_counter() - t)
        return (new_state if metrics["finite"] else state), metrics, info["record"]
