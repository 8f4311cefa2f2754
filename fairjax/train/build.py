"""Config -> model, objective, data and eval-generation (a `loop.Setup`), and `train(cfg)`.

`train(cfg, run_dir=None, setup=None) -> RunResult` is the library entry point (the CLI
`python -m fairjax.train` and `fairjax.pipeline` call it): `validate_config` (which converts the
loop's blocks once into a typed `loop.LoopConfig`), the resolved config written into the run dir,
then the generic loop (`fairjax.train.loop.run`) on that LoopConfig and `build_setup(cfg, run_dir)`
(or the given `setup`).
Objectives are looked up in `fairjax.agents.registry` (validation, algorithm, data) and read
through their declared capabilities (packable, needs_reference, online, decoding), so this module
names no objective. The data block is converted once into its typed record (`data_inputs`:
`fairjax.data.config.DataConfig` and the `Batching` it needs from optim/seed) and passed down.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Sequence

import jax
import numpy as np

from fairjax import parallel
from fairjax.agents import registry
from fairjax.agents.base import Algorithm
from fairjax.agents.registry import build_algorithm, choice
from fairjax.data import sources
from fairjax.data.config import Batching, DataConfig
from fairjax.data.demo import write_demo
from fairjax.data.episodes import episode_data
from fairjax.data.layout import Truncation
from fairjax.errors import ConfigError
from fairjax.generate import GenerationConfig, Policy, generate_texts
from fairjax.io.checkpoint import is_model_dir, load_model_dir
from fairjax.io.tokenizer import Tokenizer
from fairjax.models import build_model as module_for
from fairjax.models.common import ATTENTION_IMPLS, REMAT_POLICIES, check_scan_layers
from fairjax.models.gpt2 import PRESETS, init_params
from fairjax.models.layout import to_layout
from fairjax.models.lora import validate as validate_lora
from fairjax.optim import cast_params
from fairjax.io import run_dir as rd
from fairjax.rewards.diversity import DiversityScorer
from fairjax.rewards.embedders import make_embedder
from fairjax.rewards.pool import CandidatePool, load_pool
from fairjax.rewards.registry import reward_config
from fairjax.rewards.training import prepare_rewards, record_online_reward, rewarded_paths, source_paths
from fairjax.runs import load, restore_policy
from fairjax.train.loop import LoopConfig, RunResult, Setup, run

PyTree = Any


# =========================================================================== config checks
def _positive(cfg: Any, name: str, allow_zero: bool = False) -> None:
    v = cfg
    for part in name.split("."):
        v = getattr(v, part)
    if v < 0 or (v == 0 and not allow_zero):
        raise ConfigError(f"config.{name}={v!r}; expected {'>= 0' if allow_zero else '> 0'}")


def _check_scan_layers(cfg: Any) -> None:
    """config.model.scan_layers: a bool, and not with LoRA (adapters are per unrolled kernel)."""
    scan = cfg.model.get("scan_layers", False)
    check_scan_layers(scan, "config.model.scan_layers")
    if scan and cfg.get("lora") is not None and cfg.lora.enabled:
        raise ConfigError("config.model.scan_layers=True with config.lora.enabled=True: LoRA "
                          "adapters target unrolled per-layer kernels and are not wired for "
                          "scanned blocks yet; set model.scan_layers=False for LoRA runs")


def validate_config(cfg: Any) -> LoopConfig:
    """Ranges and choices that ConfigDict's type checks cannot express. Raises ConfigError
    naming the key. Runs before any work (no files written, no devices touched). Returns the
    loop's blocks typed (`LoopConfig.from_config`: the train / optim / mesh / distributed
    dataclasses check their own values)."""
    spec = registry.get(cfg.algorithm)  # ConfigError naming config.algorithm if unknown
    choice("model.dtype", cfg.model.dtype, ("float32", "bfloat16", "float16"))
    choice("model.remat", cfg.model.remat, tuple(REMAT_POLICIES))
    choice("model.attention", cfg.model.get("attention", "xla"), ATTENTION_IMPLS)
    _check_scan_layers(cfg)
    data = DataConfig.from_block(cfg.data)  # fields, choices, ranges (ConfigError naming the key)
    loop = LoopConfig.from_config(cfg)  # train, optim, mesh, distributed: their own checks
    if cfg.get("lora") is not None:
        validate_lora(cfg.lora, "config.lora")  # rank, dropout, quant, base_dtype
    reward_config(cfg.reward)  # ConfigError naming config.reward.<field> (rewards/registry.py)
    if str(cfg.init.step) not in ("best", "latest") and not str(cfg.init.step).isdigit():
        raise ConfigError(f"config.init.step={cfg.init.step!r}; expected best | latest | a step")
    check_data_config(data)
    check_pack_config(cfg, data)
    spec.validate(cfg)
    return loop


def data_inputs(cfg: Any) -> tuple[DataConfig, Batching]:
    """The typed data block and what the data code reads from other blocks (optim.batch_size,
    optim.grad_accum, seed): the one conversion of the run config for the data code."""
    return DataConfig.from_block(cfg.data), Batching(
        batch_size=cfg.optim.batch_size, grad_accum=cfg.optim.grad_accum, seed=cfg.seed)


def check_pack_config(cfg: Any, data: DataConfig) -> None:
    """The objective `cfg.algorithm` can train on packed rows when `data.pack` (ConfigError
    otherwise; DataConfig checked that it is a bool)."""
    if not data.pack:
        return
    spec = registry.get(cfg.algorithm)
    if not spec.packable:
        wired = [n for n in registry.names() if registry.get(n).packable]
        why = spec.no_pack_reason or "it does not declare packed batches"
        raise ConfigError(f"config.data.pack=True is not supported for algorithm "
                          f"{cfg.algorithm!r}: {why}; packing is wired for {wired} "
                          "(set --config.data.pack=False)")
    if spec.check_pack is not None:
        spec.check_pack(cfg)


# =========================================================================== build from config
def _demo_paths(data: DataConfig, seed: int, run_dir: Path) -> dict:
    """The synthetic demo corpus of `data.demo_postings` postings in RUN_DIR/data (written by
    process 0, deterministic in `seed`)."""
    d = run_dir / "data"
    paths = {k: str(d / f"jobs_{k}.jsonl") for k in ("train", "eval")}
    if parallel.is_main_process() and not all(os.path.isfile(p) for p in paths.values()):
        write_demo(d, n_postings=data.demo_postings, seed=seed)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("fairjax demo data")
    return paths


def check_data_config(data: DataConfig) -> None:
    """data.train / data.eval exist (a file or a TFDS directory) and data.task imports; a
    ConfigError naming the flag otherwise (before any file is written)."""
    for key in ("train", "eval"):
        p = getattr(data, key)
        if p and not os.path.exists(p):
            raise ConfigError(f"--config.data.{key}={p}: no such file or directory")
        if p and os.path.isdir(p) and not data.task and not sources.is_tfds_dir(p):
            raise ConfigError(f"--config.data.{key}={p}: a directory, but not a prepared TFDS "
                              "dataset (fairjax.data.tfds_jobs.prepare_jobs); give a JSONL/CSV file")
    if data.task:
        if not data.train:
            raise ConfigError(f"--config.data.task={data.task} needs --config.data.train (the "
                              "path given to the task's factory)")
        sources.task_factory(data.task)


def data_paths(data: DataConfig, seed: int, run_dir: Path) -> tuple[str, Optional[str]]:
    """(train path, eval path or None): data.train / data.eval, or the demo corpus (written in
    RUN_DIR/data with `seed`) when data.train is empty."""
    if data.train:
        check_data_config(data)
        return data.train, (data.eval or None)
    demo = _demo_paths(data, seed, run_dir)
    return demo["train"], (data.eval or demo["eval"])


def demo_tokenizer(texts: Sequence[str], vocab_size: int = 1000):
    """A small byte-level BPE trained on `texts` (the demo corpus), wrapped as a fairjax
    Tokenizer; deterministic, offline. Used by `model.init="demo-tiny"`."""
    from tokenizers import Tokenizer as BPE, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = BPE(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer_ = trainers.BpeTrainer(vocab_size=vocab_size - 6, special_tokens=["<|endoftext|>"],
                                   initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                   show_progress=False)
    bpe.train_from_iterator(list(texts), trainer=trainer_)
    hf = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>",
                                 unk_token="<|endoftext|>")
    return Tokenizer(hf, source="demo-tiny BPE")


def build_model(cfg: Any, run_dir: Path, train_path: Optional[str] = None,
                data: Optional[DataConfig] = None):
    """(model_config, module, initial LM params, tokenizer) from `cfg.model` (and `cfg.init`);
    `data` (default: `cfg.data` converted): the demo tokenizer's texts and `data.max_len`.

    A run dir that already has model/ (a relaunch) reloads it, so the tokenizer and initial
    weights are exactly the first launch's, unless `init.policy` is set: model/ then holds that
    policy, and the base comes from `model.init` again (`demo-tiny`: the policy run's model/,
    same tokenizer and base weights)."""
    data = data if data is not None else DataConfig.from_block(cfg.data)
    own = run_dir / rd.MODEL_DIR
    scan = bool(cfg.model.get("scan_layers", False))
    source = None
    if cfg.model.init == "demo-tiny" and cfg.init.policy:
        source = Path(cfg.init.policy) / rd.MODEL_DIR
    elif is_model_dir(own) and not cfg.init.policy:
        # With init.policy, own model/ holds that policy, not the base: a relaunch must rebuild
        # the base from its source as the first launch did (else ILQL's value trunks differ).
        source = own
    if source is not None:
        mcfg, params, tok = load_model_dir(source, dtype=cfg.model.dtype)
        mcfg = mcfg.replace(remat=cfg.model.remat, attention_impl=cfg.model.attention,
                            scan_layers=scan)
    elif cfg.model.init == "demo-tiny":
        tok = demo_tokenizer(sources.texts(train_path, data), cfg.model.demo_vocab_size)
        mcfg = PRESETS[cfg.model.demo_size].replace(
            vocab_size=len(tok), dtype=cfg.model.dtype, remat=cfg.model.remat,
            attention_impl=cfg.model.attention, scan_layers=scan,
            max_positions=max(PRESETS[cfg.model.demo_size].max_positions, data.max_len))
        # unrolled init, then stacked: the same initial weights in either layout
        params = jax.device_get(init_params(mcfg.replace(scan_layers=False),
                                            jax.random.PRNGKey(cfg.seed)))
    else:
        module, params, tok = load(cfg.model.init, base=cfg.model.base or None,
                                   dtype=cfg.model.dtype)
        mcfg = module.config.replace(remat=cfg.model.remat, attention_impl=cfg.model.attention,
                                     scan_layers=scan)
    # the source's block layout (unrolled h_0.. / scanned h) -> model.scan_layers' layout
    params = to_layout(params, mcfg, source=str(source or cfg.model.init))
    return mcfg, module_for(mcfg), params, tok


def _init_policy_params(cfg: Any, mcfg: Any):
    if not cfg.init.policy:
        return None
    step = cfg.init.step if cfg.init.step in ("best", "latest") else int(cfg.init.step)
    _, params = restore_policy(cfg.init.policy, step)
    return to_layout(params, mcfg, source=f"config.init.policy={cfg.init.policy}")


def build_data(cfg: Any, data: DataConfig, batching: Batching, tok, train_path: str,
               eval_path: Optional[str], reference: Optional[dict] = None):
    """(train BatchIterator over global steps, eval factory or None, steps per epoch): the
    objective's `build_data` hook, else job-posting episodes (`fairjax.data.episodes`); the data
    settings are the typed `data` / `batching` (`data_inputs`)."""
    spec = registry.get(cfg.algorithm)
    if cfg.reward.field != "reward":
        raise ConfigError(f"config.reward.field={cfg.reward.field!r}: the job reader takes rewards "
                          "from the 'reward' field; rename the field in the data")
    trunc = Truncation(max_len=data.max_len)
    if spec.build_data is not None:
        kw = {"reference": reference} if spec.needs_reference else {}
        return spec.build_data(cfg, data, batching, tok, train_path, eval_path, trunc, **kw)
    return episode_data(data, batching, tok, train_path, eval_path, trunc,
                        need_reward=spec.trains_on_reward)


def training_rewards(cfg: Any, run_dir: Path, train_path: str, eval_path: Optional[str],
                     progress: bool = True):
    """(train path, eval path) carrying the reward the run trains on (`rewards.training`):
    scored / normalised on process 0 (a progress bar when `progress`), stored in the run dir,
    read by every process."""
    spec = registry.get(cfg.algorithm)
    online = spec.online  # scores its rollouts itself
    reward = reward_config(cfg.reward)
    if parallel.is_main_process():
        try:
            if online:
                record_online_reward(reward, run_dir, train_path)
            else:
                prepare_rewards(reward, run_dir, train_path, eval_path, algorithm=cfg.algorithm,
                                demo_data=not cfg.data.train, text_field=cfg.data.text_field,
                                on_error=cfg.data.on_error, progress=progress,
                                trains_on_reward=spec.trains_on_reward)
        except ValueError as e:
            raise ConfigError(str(e)) from e
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("fairjax rewards")
    return rewarded_paths(run_dir, train_path, eval_path)


def build_setup(cfg: Any, run_dir: Path, loop: Optional[LoopConfig] = None) -> Setup:
    """Model, tokenizer, data and objective from the config (see configs/common.py); `loop`:
    the run's typed loop blocks (`validate_config`'s; converted here when not given)."""
    loop = loop if loop is not None else LoopConfig.from_config(cfg)
    data, batching = data_inputs(cfg)
    train_path, eval_path = training_rewards(cfg, run_dir, *data_paths(data, cfg.seed, run_dir),
                                             progress=loop.train.progress)
    mcfg, module, params, tok = build_model(cfg, run_dir, train_path, data)
    policy = _init_policy_params(cfg, mcfg)
    algorithm = with_param_dtype(build_algorithm(cfg, module, mcfg, params, policy),
                                 loop.optim.param_dtype)
    # objectives that read the initial policy while building data (A-LoL's V(x)) get it here
    reference = {"module": module, "params": policy if policy is not None else params,
                 "run_dir": run_dir}
    train_it, eval_fn, per_epoch = build_data(cfg, data, batching, tok, train_path, eval_path,
                                              reference)
    gen_fn = None
    if cfg.eval.generate and eval_path:
        gen_fn = make_eval_generate_fn(cfg, data, run_dir, algorithm, module, tok, eval_path)
    setup = Setup(algorithm=algorithm, train_data=train_it, eval_data=eval_fn,
                  rules=mcfg.partition_rules(), model_config=mcfg, tokenizer=tok,
                  initial_lm_params=policy if policy is not None else params,
                  steps_per_epoch=per_epoch, eval_generate_fn=gen_fn,
                  # counted on the files as first read (the rewarded copies hold only kept records)
                  data_stats=sources.read_counts(data, *source_paths(run_dir, train_path, eval_path),
                                                 getattr(train_it, "layout_stats", None)),
                  count_tokens=registry.get(cfg.algorithm).count_tokens)
    make_producer = registry.get(cfg.algorithm).make_producer
    if make_producer is not None:  # batches made from the current state (online RL rollouts)
        setup.producer = make_producer(cfg, setup, run_dir)
    return setup


def with_param_dtype(algorithm: Algorithm, param_dtype: str) -> Algorithm:
    """`algorithm` whose trainable params start in `param_dtype` (`optim.param_dtype`); for
    bfloat16 the optimizer (`optim.make_optimizer`) keeps float32 master weights. Frozen state
    is unchanged."""
    if param_dtype == "float32":
        return algorithm
    init = algorithm.init

    def cast_init(rng):
        params, frozen = init(rng)
        return cast_params(params, param_dtype), frozen

    return algorithm._replace(init=cast_init)


def make_eval_generate_fn(cfg: Any, data: DataConfig, run_dir: Path, algorithm: Algorithm,
                          module, tok, eval_path: str):
    """`eval.generate`: at each evaluation, rewrite the first `eval.num_prompts` eval postings
    (value-guided objectives: perturbed with their decoding settings' adv_weight) and report the mean diversity reward of
    the rewrites (`gen_reward`, pool = `reward.pool` or the demo candidates), their length and
    the fraction that ended with `</a>`. Single-process runs only (skipped otherwise)."""
    # unreadable eval lines are skipped here
    ds, _ = sources.read_jobs(eval_path, data.replace(on_error="skip"), "eval", need_reward=False)
    prompts = [e.prompt for e in ds][: cfg.eval.num_prompts]
    reward = reward_config(cfg.reward)
    pool_paths = list(reward.pool) or [str(run_dir / "data" / "candidates.jsonl")]
    missing = [p for p in pool_paths if not os.path.isfile(p)]
    if missing:
        raise ConfigError(f"config.eval.generate needs a candidate pool: config.reward.pool="
                          f"{','.join(reward.pool)!r} (no candidates at {missing[0]})")
    scorer = DiversityScorer(CandidatePool.concat([load_pool(p) for p in pool_paths]),
                             make_embedder(reward.embedder, reward.diversity.n_features))
    decoding = registry.get(cfg.algorithm).decoding
    # (objectives without value guidance decode the eval prompts plainly: temperature 1, top_k 0)
    g = decoding.settings(cfg) if decoding.value_guided and decoding.settings else None
    gen_cfg = GenerationConfig(max_new_tokens=cfg.eval.max_new_tokens,
                               temperature=g.temperature if g else 1.0, top_k=g.top_k if g else 0,
                               adv_weight=g.get("adv_weight", 0.0) if g else 0.0)

    def fn(params, frozen, step):
        if jax.process_count() > 1:
            return {}
        if decoding.value_guided:
            policy = Policy.guided(module, decoding.guided(cfg, *algorithm.merged(params, frozen)))
        else:
            policy = Policy.lm(*algorithm.policy(params, frozen))
        rows = generate_texts(policy, tok, prompts, gen_cfg, rng=jax.random.PRNGKey(int(step)),
                              batch_size=max(1, min(16, len(prompts))))
        texts = [r["text"] for r in rows]
        return {"gen_reward": float(np.mean(scorer.score_texts(texts))),
                "gen_new_tokens": float(np.mean([r["num_new_tokens"] for r in rows])),
                "gen_finished": float(np.mean([r["finished"] for r in rows]))}

    return fn


def train(cfg: Any, run_dir: Optional[str | os.PathLike] = None,
          setup: Optional[Setup] = None) -> RunResult:
    """Train `cfg` into `run_dir` (default cfg.run_dir); resume from its latest checkpoint when
    `cfg.train.resume`. `setup` overrides what is otherwise built from the config
    (`build_setup`): tests and pipelines pass their own algorithm/data. The loop gets the
    typed blocks (`validate_config`'s LoopConfig), never `cfg`; the resolved `cfg` is written
    into the run dir here (config.json / config.py / config_history, `io.run_dir.save_config`)."""
    loop = validate_config(cfg)
    target = Path(run_dir or cfg.run_dir).absolute()
    if parallel.is_main_process():
        rd.save_config(cfg, target)
    return run(loop, target,
               setup if setup is not None else (lambda: build_setup(cfg, target, loop)))
