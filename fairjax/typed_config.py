"""A config block turned into a typed, frozen dataclass once (nanodo's model_factory idea): every
component receives its own typed sub-config (`OptimConfig`, `MeshConfig`, `RewardConfig`, ...),
defined beside the code that implements it, never the whole run config.

`typed_block(cfg.optim, OptimConfig, "optim")` reads each field of the block by name; a field the
dataclass does not have raises ConfigError naming `config.<key>.<field>` and the fields it takes;
a field the block lacks takes the dataclass default; the dataclass's own `__post_init__` checks
(allowed values, ranges) raise ConfigError naming `config.<key>`. A leaf: imports nothing of
fairjax but errors, and no jax."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional, Sequence, TypeVar

from fairjax.errors import ConfigError

T = TypeVar("T")


def field_names(cls: type) -> set[str]:
    """The constructor fields of dataclass `cls`."""
    return {f.name for f in dataclasses.fields(cls) if f.init}


def block_items(block: Any) -> list[tuple[str, Any]]:
    """(field, value) of a ConfigDict / mapping / dataclass / None (no fields)."""
    if block is None:
        return []
    if dataclasses.is_dataclass(block) and not isinstance(block, type):
        return [(f.name, getattr(block, f.name)) for f in dataclasses.fields(block) if f.init]
    if hasattr(block, "items"):
        return list(block.items())
    raise ConfigError(f"expected a config block (ConfigDict or mapping), got {type(block).__name__}")


def typed_block(block: Any, cls: type[T], key: str, *,
                convert: Optional[Mapping[str, Callable[[Any], Any]]] = None,
                ignore: Sequence[str] = (), **fixed: Any) -> T:
    """`cls(**fields of block, **fixed)`; `convert[field]` maps a value first; fields in `ignore`
    are read by someone else. An instance of `cls` is returned as it is."""
    if isinstance(block, cls):
        return block
    names = field_names(cls)
    convert = dict(convert or {})
    kw: dict[str, Any] = {}
    for field, value in block_items(block):
        if field in ignore:
            continue
        if field not in names:
            raise ConfigError(f"config.{key}.{field}: unknown field; {key} takes "
                              f"{sorted(names | set(ignore))}")
        kw[field] = convert[field](value) if field in convert else value
    kw.update(fixed)
    try:
        return cls(**kw)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(f"config.{key}: {e}") from None


def check_choice(key: str, value: Any, choices: Sequence[Any]) -> None:
    """ConfigError `config.<key>=value; expected one of [...]` unless value is in choices."""
    if value not in choices:
        raise ConfigError(f"config.{key}={value!r}; expected one of {list(choices)}")


def check_positive(key: str, value: Any, allow_zero: bool = False) -> None:
    """ConfigError `config.<key>=value; expected > 0` (`>= 0` with allow_zero) otherwise."""
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"config.{key}={value!r}; expected {'>= 0' if allow_zero else '> 0'}")


def require(value: Any, cls: type[T], who: str, key: str) -> T:
    """`value` when it is a `cls`; else TypeError: `who` takes the typed block, converted once
    by the caller with `typed_block(cfg.<key>, cls, "<key>")`, never a raw ConfigDict."""
    if not isinstance(value, cls):
        raise TypeError(f"{who} takes the typed {cls.__name__} (typed_block(cfg.{key}, {cls.__name__}, "
                        f"{key!r})), got {type(value).__name__}")
    return value
