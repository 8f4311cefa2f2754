"""The objective registry: `config.algorithm` -> `Objective` (how it is validated and built).

Every module of `fairjax/agents/` that defines an objective registers it at import time:

    OBJECTIVE = register(Objective(name="bc", agent_config=from_config, build=build,
                                   packable=True, trains_on_reward=False))

and `get(name)` imports all `fairjax.agents.*` modules once (`discover`), so a new objective is
one agent module (its loss in `fairjax/losses/`) plus one `configs/<name>.py`; the trainer
(`fairjax.train.build`), the CLI, evaluation and `fairjax.runs` only look objectives up here and
read their declared capabilities (`Objective` fields), never their names.

`config_block(cfg, key, target, ...)` builds an agent config dataclass (and its nested `hparams`
dataclass) from the ConfigDict block `cfg.<key>` by field name: no hand-copied field lists, and a
field that neither dataclass has raises ConfigError naming `config.<key>.<field>`.
"""
from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from typing import Any, Callable, Mapping, Optional, Sequence

import fairjax.agents as pkg
from fairjax.agents.base import count_attended
from fairjax.agents.lora import loraize
from fairjax.errors import ConfigError
from fairjax.models.lora import LoraConfig, cast_base


def _never(cfg: Any) -> bool:
    return False


@dataclasses.dataclass(frozen=True)
class Decoding:
    """How an objective's policy decodes at evaluation.

    guided(cfg, params, frozen) -> the fields of a value-guided `fairjax.generate.Policy`
        (trunks, roles, heads, head_dtype) from the run config and the objective's merged
        (params, frozen), perturbed at decoding by the adv weight (None: the LM alone).
    settings(cfg) -> the config block with temperature / top_k (/ adv_weight) used to decode
        (None: temperature 1, top_k 0, adv weight 0).
    variants(cfg) -> the evaluation systems "name:adv_weight,..." of a pipeline run (None: the
        run's policy alone, beside the warm start it began from).
    unguided_untrained(cfg) -> True when decoding with adv weight 0 gives a policy this
        objective never trained (it trained on no reward).
    """

    guided: Optional[Callable[[Any, Any, Any], dict]] = None
    settings: Optional[Callable[[Any], Any]] = None
    variants: Optional[Callable[[Any], str]] = None
    unguided_untrained: Callable[[Any], bool] = _never

    @property
    def value_guided(self) -> bool:
        return self.guided is not None


@dataclasses.dataclass(frozen=True)
class Objective:
    """One trainable objective: how it is validated and built, and what it needs (capabilities
    the generic layers read instead of naming objectives).

    name: the `config.algorithm` value (its config block is `config.<name>`).
    agent_config(cfg) -> the agent's config dataclass built from `cfg.<name>`; raises ConfigError
        naming the key (this is the objective's validation).
    build(cfg, module, model_config, base_params, policy) -> Algorithm. `base_params` / `policy`
        are param trees, or `rng -> params` (the LoRA form passes adapter inits: every
        objective, offline and online, trains with `lora.enabled` through
        `agents.lora.loraize`).
    build_data(cfg, data, batching, tokenizer, train_path, eval_path, truncation[, reference=])
        -> (train iterator, eval factory or None, steps per epoch) (None: plain job-posting
        episodes, `fairjax.data.episodes.episode_data`). The data settings come typed:
        `data` is the `fairjax.data.config.DataConfig` of `config.data`, `batching` the
        `Batching` (optim.batch_size, optim.grad_accum, seed); `cfg` is read only for the
        objective's own block (and the reward block).
    make_producer(cfg, setup, run_dir) -> `agents.base.Producer` (`loop.Setup.producer`): the
        step's batch is made from the current state and the train_data batch (online RL:
        rollouts of the current policy, scored on the host, with advantages), then trained on
        by the loop's ordinary compiled step on `Algorithm.loss` (None: train on train_data).
        It reads the state through `setup.algorithm`'s declared pieces (e.g. `merged`: the
        full layout, LoRA adapters merged), never through a layout of its own.

    Capabilities:
    packable: trains on packed rows (`data.pack`); no_pack_reason says why not otherwise;
        check_pack(cfg) raises ConfigError for option combinations packing cannot carry.
    trains_on_reward: False when the objective imitates the data (no reward is read or scored).
    needs_reference: `build_data` gets `reference={"module", "params", "run_dir"}` (the
        initial policy, e.g. to fit a value baseline on it).
    count_tokens(batch) -> the tokens a host batch trains on (tokens/s).
    decoding: `Decoding` (evaluation and eval-time generation).
    online (property): makes its batches from the current policy (`make_producer`).
    """

    name: str
    agent_config: Callable[[Any], Any]
    build: Callable[..., Any]
    build_data: Optional[Callable[..., tuple]] = None
    make_producer: Optional[Callable[..., Any]] = None
    packable: bool = False
    no_pack_reason: str = ""
    check_pack: Optional[Callable[[Any], None]] = None
    trains_on_reward: bool = True
    needs_reference: bool = False
    count_tokens: Callable[[Mapping[str, Any]], int] = count_attended
    decoding: Decoding = Decoding()

    @property
    def online(self) -> bool:
        return self.make_producer is not None

    def validate(self, cfg: Any) -> None:
        self.agent_config(cfg)


_REGISTRY: dict[str, Objective] = {}
_DISCOVERED = False


def register(objective: Objective) -> Objective:
    """Add `objective` (at import of its module); a second, different one of a name is an error."""
    old = _REGISTRY.get(objective.name)
    if old is not None and old is not objective and old.build is not objective.build:
        raise ValueError(f"objective {objective.name!r} is registered twice "
                         f"({old.build.__module__} and {objective.build.__module__})")
    _REGISTRY[objective.name] = objective
    return objective


def discover() -> None:
    """Import every module of `fairjax.agents` once so that each registers its objective."""
    global _DISCOVERED
    if _DISCOVERED:
        return
    for info in pkgutil.iter_modules(pkg.__path__):
        importlib.import_module(f"{pkg.__name__}.{info.name}")
    _DISCOVERED = True


def names() -> list[str]:
    discover()
    return sorted(_REGISTRY)


def get(name: str) -> Objective:
    """The registered objective `name`; ConfigError naming `config.algorithm` otherwise."""
    discover()
    if name not in _REGISTRY:
        raise ConfigError(f"config.algorithm={name!r}; expected one of {names()}")
    return _REGISTRY[name]


# ----------------------------------------------------------------------------- config blocks
def _field_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls) if f.init}


def config_block(cfg: Any, key: str, target: type, *, hparams: Optional[type] = None,
                 convert: Optional[Mapping[str, Callable[[Any], Any]]] = None,
                 ignore: Sequence[str] = (), **fixed: Any):
    """`target(hparams=hparams(**hp_fields), **target_fields, **fixed)` from `cfg.<key>`.

    Each field of the block goes, by name, to `hparams` (if it has that field) or `target`;
    `convert[field]` maps its value first (e.g. 0 -> None); fields in `ignore` are read by other
    hooks (data, decoding). Any other field raises ConfigError naming `config.<key>.<field>`;
    invalid values (the dataclasses' own checks) raise ConfigError naming `config.<key>`."""
    block = cfg.get(key) if hasattr(cfg, "get") else getattr(cfg, key, None)
    if block is None:
        raise ConfigError(f"config.{key}: missing block (config.algorithm={key!r} needs it; "
                          f"see configs/{key}.py)")
    convert = dict(convert or {})
    hp_names = _field_names(hparams) if hparams is not None else set()
    top_names = _field_names(target) - {"hparams"}
    hp_kw: dict[str, Any] = {}
    top_kw: dict[str, Any] = dict(fixed)
    for field, value in block.items():
        if field in ignore:
            continue
        if field in convert:
            value = convert[field](value)
        if field in hp_names:
            hp_kw[field] = value
        elif field in top_names:
            top_kw[field] = value
        else:
            raise ConfigError(f"config.{key}.{field}: unknown field; {key} takes "
                              f"{sorted(hp_names | top_names | set(ignore))}")
    try:
        if hparams is not None:
            top_kw["hparams"] = hparams(**hp_kw)
        return target(**top_kw)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"config.{key}: {e}") from None


def choice(key: str, value: Any, choices: Sequence[Any]) -> None:
    """ConfigError `config.<key>=value; expected one of [...]` unless value is in choices."""
    if value not in choices:
        raise ConfigError(f"config.{key}={value!r}; expected one of {list(choices)}")


# ----------------------------------------------------------------------------- building
def lora_config(cfg: Any):
    """`models.lora.LoraConfig` of the config's `lora` block."""
    return LoraConfig.from_config(cfg.lora)


def build_algorithm(cfg: Any, module, model_config, base_params, policy_params=None):
    """The `Algorithm` of `cfg.algorithm` around `module` (policy = `policy_params` or the base);
    with `lora.enabled`, its LoRA form (`agents.lora.loraize`) on the (cast) policy as the one
    frozen base."""
    spec = get(cfg.algorithm)
    policy = base_params if policy_params is None else policy_params
    if cfg.get("lora") is None or not cfg.lora.enabled:
        return spec.build(cfg, module, model_config, base_params, policy)
    base = cast_base(policy, cfg.lora.base_dtype)
    return loraize(lambda m, lm: spec.build(cfg, m, model_config, lm, lm), module, base,
                   lora_config(cfg), model_config.kind)
