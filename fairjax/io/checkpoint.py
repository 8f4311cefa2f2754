"""Orbax helpers: fairjax model directories, plain pytree checkpoints, run-dir policy lookup.

A **fairjax model directory** (docs/architecture.md):
    fairjax_model.json   {"kind", "config": <HF config dict>, "format_version": 1,
                          "options": {"dtype", "remat", "scan_layers"}, "meta": {...extra_meta}}
    tokenizer/           HF tokenizer files (with the six layout tokens)
    params/              Orbax (StandardCheckpointer) PyTree checkpoint of the float32 LM params
It is written into a temporary sibling directory and renamed into place, so a crash never leaves a
half-written model directory, and an existing non-empty directory is only replaced with
`overwrite=True` (the old one is removed only after the new one is complete).
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np

from fairjax.errors import CheckpointMismatchError, ConfigError
from fairjax.io.tokenizer import Tokenizer, assert_vocab_matches
from fairjax.models import common, model_module
from fairjax.models.layout import to_layout

MODEL_JSON = "fairjax_model.json"
FORMAT_VERSION = 1


def _abs(path: str | os.PathLike) -> Path:
    return Path(path).expanduser().resolve()


# ----------------------------------------------------------------------------- pytrees
def save_pytree(path: str | os.PathLike, tree: Any, overwrite: bool = False) -> Path:
    """Save a pytree of arrays with Orbax's StandardCheckpointer (blocks until written)."""
    import orbax.checkpoint as ocp

    path = _abs(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(path, tree, force=overwrite)
    ckptr.wait_until_finished()
    return path


def restore_pytree(path: str | os.PathLike, target: Any = None) -> Any:
    """Restore a pytree saved by `save_pytree` (or any Orbax PyTree/Standard checkpoint dir).

    target: optional tree of arrays / jax.ShapeDtypeStruct giving structure, shapes, dtypes
    (and shardings); without it the saved structure is restored as is.
    """
    import jax
    import orbax.checkpoint as ocp

    path = _abs(path)
    if not (path / "_METADATA").is_file() and not (path / "_CHECKPOINT_METADATA").is_file():
        raise FileNotFoundError(f"{path}: not an Orbax pytree checkpoint (no _METADATA)")
    ckptr = ocp.StandardCheckpointer()
    if target is not None:
        target = jax.tree.map(lambda x: x if isinstance(x, jax.ShapeDtypeStruct) else
                              jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), target)
    return ckptr.restore(path, target)


def _to_numpy(tree):
    import jax

    return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), tree)


# ----------------------------------------------------------------------------- model dirs
def _to_layout(params, config, source: str):
    """`params` in the block layout of `config` (`fairjax.models.layout.to_layout`)."""
    return to_layout(params, config, source)


def is_model_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / MODEL_JSON).is_file()


def is_run_dir(path: str | os.PathLike) -> bool:
    p = Path(path)
    return (p / "checkpoints").is_dir() and is_model_dir(p / "model")


def check_output_free(out: Path, overwrite: bool) -> None:
    """Raise FileExistsError if `out` is a file or a non-empty directory (unless overwrite)."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} is not empty; refusing to overwrite it (pass overwrite=True / "
                              "--overwrite to replace it)")


def atomic_dir(out: str | os.PathLike, write, overwrite: bool = False) -> Path:
    """Call `write(tmp_dir)` on a fresh sibling temp dir, then move it to `out` atomically.

    Refuses a non-empty `out` unless `overwrite`; on failure the temp dir is removed and `out`
    is untouched."""
    out = _abs(out)
    check_output_free(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        write(tmp)
        if out.exists():
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def save_model_dir(path: str | os.PathLike, config, params, tokenizer,
                   extra_meta: Optional[Mapping[str, Any]] = None, overwrite: bool = False) -> Path:
    """Write a fairjax model directory (see module docstring). Returns its absolute path.

    config: GPT2Config / LlamaConfig; params: the LM param tree; tokenizer: fairjax Tokenizer.
    """
    if tokenizer is not None:
        assert_vocab_matches(tokenizer, config, allow_padding=True)
    check_params(config, params, source="params to save")
    meta = {"kind": config.kind, "config": config.to_hf(), "format_version": FORMAT_VERSION,
            "options": {"dtype": config.dtype, "remat": config.remat,
                        "scan_layers": bool(getattr(config, "scan_layers", False))},
            "tokenizer": {"chat_template": bool(getattr(tokenizer, "use_chat_template", False))},
            "meta": dict(extra_meta or {})}

    def write(tmp: Path):
        (tmp / MODEL_JSON).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        if tokenizer is not None:
            tokenizer.save(tmp / "tokenizer")
        save_pytree(tmp / "params", _to_numpy(params))

    return atomic_dir(path, write, overwrite=overwrite)


def read_model_json(path: str | os.PathLike) -> dict:
    f = Path(path) / MODEL_JSON
    if not f.is_file():
        raise FileNotFoundError(f"{path}: no {MODEL_JSON} (not a fairjax model directory)")
    try:
        meta = json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{f}:{e.lineno}: invalid JSON ({e.msg})") from e
    for key in ("kind", "config", "format_version"):
        if key not in meta:
            raise ConfigError(f"{f}: missing key {key!r}")
    if meta["format_version"] != FORMAT_VERSION:
        raise ConfigError(f"{f}: format_version {meta['format_version']} is not supported "
                          f"(this fairjax reads {FORMAT_VERSION})")
    return meta


def config_from_model_dir(path: str | os.PathLike, dtype: Optional[str] = None):
    meta = read_model_json(path)
    options = dict(meta.get("options") or {})
    if dtype is not None:
        options["dtype"] = dtype
    cfg_dict = dict(meta["config"], model_type=meta["config"].get("model_type", meta["kind"]))
    try:
        return model_module(meta["kind"]).Config.from_hf(cfg_dict, **options)
    except ConfigError as e:
        raise ConfigError(f"{Path(path) / MODEL_JSON}: {e}") from e


def check_params(config, params, source: str = "params") -> None:
    """Raise CheckpointMismatchError unless `params` has exactly the model's paths and shapes."""
    want = common.flat_shapes(common.abstract_params(model_module(config.kind).Model(config)))
    got = common.flat_shapes(params)
    j = "/".join
    mism = {j(k): (want[k], got[k]) for k in want if k in got and tuple(want[k]) != tuple(got[k])}
    missing = sorted(j(k) for k in want if k not in got)
    unexpected = sorted(j(k) for k in got if k not in want)
    if missing or unexpected or mism:
        raise CheckpointMismatchError(missing=missing, unexpected=unexpected, mismatched=mism,
                                      source=source)


def load_model_dir(path: str | os.PathLike, dtype: Optional[str] = None):
    """(config, float32 numpy params, Tokenizer | None) of a fairjax model directory."""
    path = _abs(path)
    config = config_from_model_dir(path, dtype)
    chat = (read_model_json(path).get("tokenizer") or {}).get("chat_template")  # None: auto
    params = _to_numpy(restore_pytree(path / "params"))
    # a dir saved in the other block layout (unrolled h_0.. / scanned h) is converted
    params = _to_layout(params, config, source=str(path / "params"))
    check_params(config, params, source=str(path / "params"))
    tok_dir = path / "tokenizer"
    tokenizer = Tokenizer.from_dir(tok_dir, chat_template=chat) if tok_dir.is_dir() else None
    return config, params, tokenizer


# ----------------------------------------------------------------------------- run dirs
_SKIP = ("opt", "mu", "nu", "frozen", "target", "qv", "ref", "ema")


def find_lm_params(tree: Any, config, prefer: tuple[str, ...] = ("policy", "params")):
    """The sub-tree of `tree` whose paths/shapes are exactly the LM params of `config`.

    Several sub-trees can match (optimizer moments, target/reference copies); ranked by
    path: one containing a `prefer` name and no optimizer/target/reference name wins.
    Returns (path tuple, params). Raises CheckpointMismatchError if none matches."""
    want = common.flat_shapes(common.abstract_params(model_module(config.kind).Model(config)))
    found: list[tuple[tuple[str, ...], Any]] = []

    def visit(path, node):
        if not isinstance(node, Mapping):
            return
        try:
            shapes = common.flat_shapes(node)
        except Exception:  # noqa: BLE001 - non-array leaves
            shapes = None
        if shapes == {k: tuple(v) for k, v in want.items()}:
            found.append((path, node))
            return
        for k, v in node.items():
            visit(path + (str(k),), v)

    visit((), tree)
    if not found:
        raise CheckpointMismatchError(source="run checkpoint", note=(
            f"no sub-tree matches the {config.kind} params of the run's model/ "
            f"({len(want)} arrays, e.g. {'/'.join(next(iter(want)))})"))

    def rank(item):
        path = [p.lower() for p in item[0]]
        bad = any(any(s == p or p.startswith(s + "_") for s in _SKIP) for p in path)
        good = min((prefer.index(p) for p in path if p in prefer), default=len(prefer))
        return (bad, good, len(path))

    return min(found, key=rank)


def load_run_dir(path: str | os.PathLike, step=None, dtype: Optional[str] = None,
                 restore_policy=None):
    """(config, policy params, tokenizer) of a fairjax run directory.

    config + tokenizer come from `run_dir/model/`. Params: for a trainer run (config.json present)
    `restore_policy(run_dir, step)` (`fairjax.runs.load_policy_params`, passed by `fairjax.runs`:
    io never imports the objectives) rebuilds the objective and restores its policy (step None =
    best eval loss, else latest; "latest"; or an int). Otherwise the latest
    (or `step`) Orbax checkpoint under `checkpoints/` is restored item by item and the LM param
    sub-tree is found by `find_lm_params` (policy preferred). Without any checkpoint the initial
    policy in `model/` is returned.
    """
    path = _abs(path)
    config, params, tokenizer = load_model_dir(path / "model", dtype=dtype)
    if (path / "config.json").is_file():
        if restore_policy is None:
            raise ConfigError(f"{path} is a fairjax training run directory (config.json): load it "
                              "with fairjax.runs.load (it rebuilds the run's objective to "
                              "restore the policy), not fairjax.io.loader.load")
        restored = restore_policy(path, step)
        if restored is not None:
            params = _to_layout(_to_numpy(restored), config,
                               source=f"{path} (fairjax.runs.load_policy_params)")
            check_params(config, params, source=f"{path} (fairjax.runs.load_policy_params)")
        return config, params, tokenizer
    if step in ("best", "latest"):
        step = None
    steps = sorted(int(p.name) for p in (path / "checkpoints").iterdir()
                   if p.is_dir() and p.name.isdigit())
    if step is not None and step not in steps:
        raise FileNotFoundError(f"{path}/checkpoints has no step {step}; available: {steps}")
    if not steps:
        return config, params, tokenizer
    step_dir = path / "checkpoints" / str(step if step is not None else steps[-1])
    items = {p.name: p for p in sorted(step_dir.iterdir()) if (p / "_METADATA").is_file()}
    if (step_dir / "_METADATA").is_file():
        items = {"": step_dir}
    if not items:
        raise FileNotFoundError(f"{step_dir}: no Orbax pytree item found")
    tree = {name: restore_pytree(p) for name, p in items.items()}
    _, found = find_lm_params(tree, config)
    return config, _to_layout(_to_numpy(found), config, source=str(step_dir)), tokenizer
