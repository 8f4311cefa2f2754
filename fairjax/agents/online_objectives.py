"""The online objectives `grpo`, `rloo`, `ppo` for `python -m fairjax.train` (registry entries).

`config.<algo>` holds `OnlineConfig`'s fields (group_size, max_prompt_tokens, max_new_tokens,
temperature, top_k, top_p, epochs, minibatches, reference, value_trunk) and the objective's loss
options (`GRPOHParams` / `RLOOHParams` / `PPOHParams` fields) side by side; `optim.batch_size` is
the number of completions per step (prompts × group_size). The reward is `config.reward`
(`rewards.registry.build_reward_scorer`: diversity / gender_coded / pii / preservation /
composite), computed on the host each step; preservation terms compare with the original posting.

The train data are the job prompts (`<s>{prompt}</s>`, left-trimmed to max_prompt_tokens); each
prompt row is repeated group_size times so a step's batch has optim.batch_size rows like every
other objective. The objective's `make_producer` gives the generic loop (`fairjax.train.loop`)
a `Producer` (`online.Rollout`): each step it turns the prompt batch into a rollout batch of the
current policy (scored, with advantages), which the loop's ordinary compiled step trains on with
the objective's loss (`online.online_algorithm`; epochs × minibatches = the step's updates). The
loop's checkpoints (params, opt_state, frozen, step, rng, data position) make a resumed run
sample exactly what an uninterrupted one would: the rollout key is fold_in(rng, step).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Optional

import numpy as np

from fairjax.agents import online as O
from fairjax.agents.base import Algorithm, Producer
from fairjax.agents.registry import Decoding, Objective, register
from fairjax.data import sources
from fairjax.data.batching import BatchIterator
from fairjax.data.config import Batching, DataConfig
from fairjax.data.layout import prompt_tokens
from fairjax.errors import ConfigError
from fairjax.generate import left_pad
from fairjax.losses.grpo import GRPOHParams
from fairjax.losses.ppo import PPOHParams
from fairjax.losses.rloo import RLOOHParams
from fairjax.models import build_model
from fairjax.parallel import MeshConfig, make_mesh
from fairjax.rewards.registry import build_reward_scorer, reward_config
from fairjax.typed_config import typed_block

HPARAMS = {"grpo": GRPOHParams, "rloo": RLOOHParams, "ppo": PPOHParams}
_TOP = {f.name for f in dataclasses.fields(O.OnlineConfig)} - {"algo", "batch_size", *HPARAMS}


def online_config(cfg: Any, algo: str) -> O.OnlineConfig:
    """`OnlineConfig` from `config.<algo>` + `config.optim.batch_size`; ConfigError naming the key."""
    block = cfg.get(algo)
    if block is None:
        raise ConfigError(f"config.{algo}: missing block (see configs/{algo}.py)")
    hp_cls = HPARAMS[algo]
    hp_names = {f.name for f in dataclasses.fields(hp_cls)}
    top, hp = {}, {}
    for key, value in block.items():
        if key in hp_names:
            hp[key] = None if key == "max_completion_length" and not value else value
        elif key in _TOP:
            top[key] = value
        else:
            raise ConfigError(f"config.{algo}.{key}: unknown field; {algo} takes "
                              f"{sorted(hp_names | _TOP)}")
    if int(cfg.optim.grad_accum) != 1:
        raise ConfigError(f"config.optim.grad_accum={cfg.optim.grad_accum}: online objectives "
                          f"take one rollout batch per step (use config.{algo}.minibatches)")
    try:
        oc = O.OnlineConfig(algo=algo, batch_size=int(cfg.optim.batch_size),
                            **{algo: hp_cls(**hp)}, **top)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"config.{algo}: {e}") from None
    return oc.validate(prefix=f"config.{algo}", batch_key="config.optim.batch_size",
                       hparams_prefix=f"config.{algo}")


def build(cfg, module, mcfg, base_params, policy_params) -> Algorithm:
    """The online loss on rollout batches (`online.online_algorithm`); its init starts from
    `policy_params`, a params tree or `rng -> params` (`agents.lora.loraize` passes the adapter
    init: with `lora.enabled` the online objectives get their LoRA form like every other)."""
    import jax

    oc = online_config(cfg, cfg.algorithm)
    parts = O.PolicyParts(module)

    def init(rng):
        pol = policy_params(rng) if callable(policy_params) else policy_params
        return O.init_params(parts, oc, pol, jax.random.fold_in(rng, 1))

    return O.online_algorithm(parts, oc, init)


class PromptRows:
    """Prompt rows of the job task, each repeated G times: (ids [L], example index)."""

    def __init__(self, prompts: list, ids: list[str], texts: list[str]):
        self.prompts, self.ids, self.texts = prompts, ids, texts

    def __len__(self):
        return len(self.prompts)

    def __getitem__(self, i):
        return i


def build_data(cfg, data: DataConfig, batching: Batching, tok, train_path: str,
               eval_path: Optional[str], trunc):
    """(prompt BatchIterator, None, steps per epoch): batches {"prompt_ids", "prompt_mask",
    "index"} of optim.batch_size rows (P prompts × G, left-padded to max_prompt_tokens)."""
    import jax

    oc = online_config(cfg, cfg.algorithm)
    if data.task:
        raise ConfigError(f"--config.data.task={data.task}: the online objectives sample "
                          "rewrites of job-posting prompts; a custom task is not wired for them")
    ds, _ = sources.read_jobs(train_path, data, "train", need_reward=False)  # file or TFDS dir
    width = oc.max_prompt_tokens
    prompts = [prompt_tokens(tok, e.prompt, max_len=width) for e in ds]
    rows = PromptRows(prompts, [e.id for e in ds], [e.response for e in ds])
    G = oc.group_size

    def collate(items, **_):
        idx = np.repeat(np.asarray(items, np.int64), G)
        ids, mask = left_pad([prompts[i] for i in idx], width, tok.pad_id)
        return {"prompt_ids": ids, "prompt_mask": mask, "index": idx}

    it = BatchIterator(rows, oc.prompts_per_step, seed=batching.seed, shuffle=data.shuffle,
                       collate_fn=collate, length_fn=lambda i: (len(prompts[i]), 1),
                       process_index=jax.process_index(), process_count=jax.process_count(),
                       buckets=None)
    it.rows = rows
    return it, None, it.batches_per_epoch()


def make_producer(cfg, setup, run_dir) -> Producer:
    """`loop.Setup.producer` of an online objective: each step, the prompt batch (P·G rows) and
    the current state -> the rollout batch the loop's compiled step trains on (`online.Rollout`)."""
    oc = online_config(cfg, cfg.algorithm)
    room = setup.model_config.max_positions
    if oc.max_prompt_tokens + oc.max_new_tokens > room:
        raise ConfigError(f"config.{cfg.algorithm}.max_prompt_tokens={oc.max_prompt_tokens} + "
                          f"max_new_tokens={oc.max_new_tokens} exceed the model's {room} "
                          "positions; lower one of them")
    parts = O.PolicyParts(build_model(setup.model_config))
    demo_pool = os.path.join(str(run_dir), "data", "candidates.jsonl")
    scorer = build_reward_scorer(reward_config(cfg.reward), default_pool=demo_pool
                                 if os.path.isfile(demo_pool) else None)
    # the loop's mesh (the same devices and axes from the same config block)
    # the rollout reads the state in full layout: the objective's merged view (LoRA: adapters
    # merged into the frozen base; identity otherwise)
    rollout = O.Rollout(parts, oc, setup.tokenizer, scorer,
                        mesh=make_mesh(typed_block(cfg.mesh, MeshConfig, "mesh")),
                        view=setup.algorithm.merged)
    rows, G, width = setup.train_data.rows, oc.group_size, oc.max_prompt_tokens

    def produce(state, batch):
        idx = np.asarray(batch["index"]).reshape(-1)[::G]  # every G-th row is a new prompt
        ids = np.asarray(batch["prompt_ids"]).reshape(-1, width)[::G]
        mask = np.asarray(batch["prompt_mask"]).reshape(-1, width)[::G]
        prompts = [r[m > 0] for r, m in zip(ids, mask)]
        return rollout(state, prompts, [rows.ids[i] for i in idx], [rows.texts[i] for i in idx])

    return Producer(produce=produce, updates=rollout.updates, summarize=rollout.summarize)


for _name in HPARAMS:
    register(Objective(name=_name, agent_config=lambda cfg, n=_name: online_config(cfg, n),
                       build=build, build_data=build_data,
                       make_producer=make_producer,
                       no_pack_reason="it samples its own rollouts (online RL)",
                       decoding=Decoding(settings=lambda cfg: cfg[cfg.algorithm])))
