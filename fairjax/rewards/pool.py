"""Candidate pools for the diversity reward: JSONL of {text, gender?, region?, profession?, location?, id}.

The real pools in `../shared/data` load as they are with the default field names:
`bios/bios.jsonl` and `tech_bios/bios.jsonl` ({id, text, gender: "F"|"M", profession, source}) and
`hn_candidates/candidates.jsonl` ({id, text, date, source}; **no gender**). A pool without gender
labels is allowed and supports region-only analysis; its location is read from the post's
"Location: ..." line (`infer_location`) and mapped to one of the 8 upstream regions by keyword
(`infer_region`). Attributes absent from a whole file are None; present on some lines but missing on
others -> error naming file:line. Labels are normalised: gender -> "female" | "male"; region -> one of
REGIONS.

Embeddings of a pool are computed once per (texts, embedder) and cached as
`<cache_dir>/pool-<sha256(embedder.id + text hashes)[:24]>.npz`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np

from fairjax.rewards.embedders import Embedder, text_hash

ATTRIBUTES = ("gender", "region", "profession")
GENDERS = ("female", "male")
GENDER_ALIASES = {"f": "female", "female": "female", "woman": "female", "w": "female",
                  "m": "male", "male": "male", "man": "male"}
# Upstream's 8 `Main_location` values (reference §4.4), snake-cased.
REGIONS = ("north_america", "europe", "asia", "remote", "australia", "africa", "south_america",
           "unknown")
# Keyword lists written for fairjax (whole words / phrases, lower-case). Geographic regions are tried
# before "remote", so "Remote or Berlin" is europe; nothing matched -> unknown.
REGION_KEYWORDS: dict[str, tuple[str, ...]] = {
    "north_america": (
        "usa", "us", "u.s.", "u.s.a.", "united states", "america", "canada", "mexico", "sf",
        "san francisco", "bay area", "silicon valley", "new york", "nyc", "seattle", "boston",
        "chicago", "austin", "los angeles", "la", "toronto", "vancouver", "montreal", "portland",
        "denver", "dc", "washington", "california", "ca", "texas", "oregon", "pittsburgh", "atlanta",
        "miami", "philadelphia", "san diego", "ottawa", "utah", "colorado", "florida", "michigan",
        "ohio", "virginia", "massachusetts", "minneapolis", "est", "pst", "cst", "mst", "et", "pt",
        "edt", "pdt", "eastern", "pacific", "central", "mountain", "north america",
    ),
    "europe": (
        "europe", "european", "eu", "uk", "united kingdom", "england", "scotland", "london",
        "berlin", "germany", "munich", "hamburg", "paris", "france", "amsterdam", "netherlands",
        "spain", "madrid", "barcelona", "zurich", "switzerland", "sweden", "stockholm", "ireland",
        "dublin", "poland", "warsaw", "krakow", "italy", "milan", "rome", "portugal", "lisbon",
        "porto", "cet", "cest", "gmt", "bst", "ukraine", "kyiv", "kiev", "romania", "bulgaria",
        "serbia", "belgrade", "croatia", "greece", "austria", "vienna", "belgium", "brussels",
        "denmark", "copenhagen", "norway", "oslo", "finland", "helsinki", "czech", "prague",
        "hungary", "budapest", "estonia", "latvia", "lithuania", "russia", "moscow", "turkey",
        "istanbul", "edinburgh", "manchester", "cambridge", "oxford",
    ),
    "asia": (
        "asia", "india", "bangalore", "bengaluru", "mumbai", "delhi", "pune", "hyderabad",
        "chennai", "china", "beijing", "shanghai", "shenzhen", "japan", "tokyo", "singapore",
        "hong kong", "korea", "seoul", "taiwan", "taipei", "vietnam", "philippines", "manila",
        "indonesia", "jakarta", "malaysia", "thailand", "bangkok", "pakistan", "bangladesh",
        "sri lanka", "nepal", "israel", "tel aviv", "dubai", "uae", "saudi", "qatar", "j&k",
        "kashmir", "srinagar",
    ),
    "australia": ("australia", "melbourne", "sydney", "brisbane", "perth", "adelaide",
                  "new zealand", "auckland", "wellington", "aest", "nz"),
    "africa": ("africa", "nigeria", "lagos", "kenya", "nairobi", "egypt", "cairo", "ghana",
               "accra", "south africa", "cape town", "johannesburg", "morocco", "ethiopia",
               "uganda", "tanzania", "rwanda", "tunisia"),
    "south_america": ("south america", "latin america", "latam", "brazil", "sao paulo",
                      "são paulo", "rio", "argentina", "buenos aires", "chile", "santiago",
                      "colombia", "bogota", "medellin", "peru", "lima", "uruguay", "montevideo",
                      "venezuela", "ecuador"),
    "remote": ("remote", "anywhere", "any", "worldwide", "offshore", "global", "everywhere"),
}
_REGION_RE = {r: re.compile(r"(?<![\w.&])(?:" + "|".join(re.escape(k) for k in sorted(kws, key=len, reverse=True))
                            + r")(?![\w&])") for r, kws in REGION_KEYWORDS.items()}
_LOCATION_LINE = re.compile(r"(?im)^\s*location\s*[:\-]\s*(.+?)\s*$")


def infer_region(location: Optional[str]) -> str:
    """Location string -> one of REGIONS (first geographic match, then remote, else unknown)."""
    if not location:
        return "unknown"
    loc = location.lower()
    for region in REGIONS[:-1]:
        if region != "remote" and _REGION_RE[region].search(loc):
            return region
    return "remote" if _REGION_RE["remote"].search(loc) else "unknown"


def infer_location(text: str) -> Optional[str]:
    """The value of a 'Location: ...' line (HN 'Who wants to be hired?' template), else None."""
    m = _LOCATION_LINE.search(text)
    return m.group(1) if m else None


def location_tokens(location: Optional[str]) -> set[str]:
    """Upstream location-filter tokens: lower-case, commas removed, whitespace split, 'and' dropped."""
    if not location:
        return set()
    return {t for t in location.lower().replace(",", " ").split() if t != "and"}


class PoolFormatError(ValueError):
    """A pool file line is invalid; the message names file:line and the problem."""


@dataclasses.dataclass(frozen=True)
class PoolFields:
    """Field names in the JSONL (None = not read)."""

    text: str = "text"
    id: Optional[str] = "id"
    gender: Optional[str] = "gender"
    region: Optional[str] = "region"
    profession: Optional[str] = "profession"
    location: Optional[str] = "location"


@dataclasses.dataclass
class CandidatePool:
    """Candidates (M of them). Attribute arrays are object [M] of str ('' = unlabelled) or None."""

    texts: list[str]
    ids: list[str]
    gender: Optional[np.ndarray] = None
    region: Optional[np.ndarray] = None
    profession: Optional[np.ndarray] = None
    location: Optional[list[Optional[str]]] = None
    sources: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.texts)

    def labels(self, attribute: str) -> Optional[np.ndarray]:
        if attribute not in ATTRIBUTES:
            raise ValueError(f"unknown pool attribute {attribute!r}; expected one of {ATTRIBUTES}")
        return getattr(self, attribute)

    def content_hash(self) -> str:
        h = hashlib.sha256()
        for t in self.texts:
            h.update(text_hash(t).encode())
        return h.hexdigest()

    def describe(self) -> str:
        parts = [f"{len(self)} candidates from {', '.join(self.sources) or '<memory>'}"]
        for a in ATTRIBUTES:
            lab = self.labels(a)
            if lab is not None:
                vals, cnt = np.unique(lab[lab != ""], return_counts=True)
                top = sorted(zip(cnt, vals), reverse=True)[:8]
                parts.append(f"{a}: " + ", ".join(f"{v}={c}" for c, v in top)
                             + (f" (+{len(vals) - 8} more)" if len(vals) > 8 else "")
                             + (f", unlabelled={int((lab == '').sum())}" if (lab == "").any() else ""))
            else:
                parts.append(f"{a}: none")
        return "; ".join(parts)

    @staticmethod
    def concat(pools: Sequence["CandidatePool"]) -> "CandidatePool":
        """One pool from several; an attribute missing from some pools is unlabelled ('') there."""
        if not pools:
            raise ValueError("no candidate pools given")
        out: dict = {"texts": [t for p in pools for t in p.texts],
                     "ids": [i for p in pools for i in p.ids],
                     "sources": tuple(s for p in pools for s in p.sources)}
        for a in ATTRIBUTES:
            if all(p.labels(a) is None for p in pools):
                out[a] = None
            else:
                out[a] = np.concatenate([p.labels(a) if p.labels(a) is not None
                                         else np.full(len(p), "", object) for p in pools])
        if any(p.location is not None for p in pools):
            out["location"] = [x for p in pools for x in (p.location or [None] * len(p))]
        return CandidatePool(**out)

    def embeddings(self, embedder: Embedder, cache_dir: Optional[str | os.PathLike] = None,
                   ) -> np.ndarray:
        """[M, D] float32 embeddings, read from / written to the on-disk cache when `cache_dir`."""
        if cache_dir is None:
            return embedder.embed(self.texts)
        key = hashlib.sha256((embedder.id + "\n" + self.content_hash()).encode()).hexdigest()[:24]
        path = Path(cache_dir) / f"pool-{key}.npz"
        if path.is_file():
            try:
                with np.load(path) as z:
                    if str(z["embedder"]) == embedder.id and z["vectors"].shape[0] == len(self):
                        return z["vectors"].astype(np.float32)
            except (OSError, KeyError, ValueError):
                pass  # unreadable cache entry: recompute and overwrite it
        vecs = embedder.embed(self.texts)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, embedder=embedder.id, vectors=vecs)
        os.replace(tmp, path)
        return vecs


def _label(value, attribute: str, where: str, aliases: Optional[Mapping[str, str]]) -> str:
    if not isinstance(value, str) or not value.strip():
        raise PoolFormatError(f"{where}: {attribute!r} must be a non-empty string, got {value!r}")
    v = value.strip().lower()
    if attribute == "gender":
        table = GENDER_ALIASES if aliases is None else {k.lower(): x for k, x in aliases.items()}
        if v not in table:
            raise PoolFormatError(f"{where}: gender {value!r} is not one of {sorted(table)}")
        return table[v]
    if attribute == "region":
        v = v.replace(" ", "_").replace("-", "_")
        if v not in REGIONS:
            raise PoolFormatError(f"{where}: region {value!r} is not one of {list(REGIONS)}")
    return v


def load_pool(path: str | os.PathLike, fields: PoolFields = PoolFields(),
              gender_aliases: Optional[Mapping[str, str]] = None,
              infer_locations: Optional[bool] = None, limit: Optional[int] = None) -> CandidatePool:
    """Read a JSONL candidate pool.

    infer_locations: read locations from 'Location:' lines when the file has no location field
    (None = auto: when at least half the texts have such a line). Regions are inferred from the
    location when the file has no region field. Raises PoolFormatError (file:line + reason) for
    invalid JSON, a non-object line, a missing/empty text, an attribute present on some lines but
    missing on others, an unknown label value, or an empty pool.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"candidate pool {path} does not exist")
    rows: list[tuple[int, dict]] = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise PoolFormatError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from e
            if not isinstance(rec, dict):
                raise PoolFormatError(f"{where}: expected a JSON object, got {type(rec).__name__}")
            t = rec.get(fields.text)
            if not isinstance(t, str) or not t.strip():
                raise PoolFormatError(f"{where}: missing or empty text field {fields.text!r}")
            rows.append((n, rec))
            if limit is not None and len(rows) >= limit:
                break
    if not rows:
        raise PoolFormatError(f"{path}: the candidate pool is empty")
    texts = [r[fields.text] for _, r in rows]
    ids = [str(r.get(fields.id, f"{path.name}:{n}")) if fields.id else f"{path.name}:{n}"
           for n, r in rows]
    attrs: dict[str, Optional[np.ndarray]] = {}
    for a in ATTRIBUTES + ("location",):
        key = getattr(fields, a)
        have = [key is not None and key in r for _, r in rows]
        if not any(have):
            attrs[a] = None
            continue
        if not all(have):
            n = rows[have.index(False)][0]
            raise PoolFormatError(f"{path}:{n}: field {key!r} is missing (other lines have it)")
        if a == "location":
            attrs[a] = [r[key] if isinstance(r[key], str) else None for _, r in rows]
        else:
            attrs[a] = np.array([_label(r[key], a, f"{path}:{n}", gender_aliases) for n, r in rows],
                                object)
    location = attrs.pop("location")
    if location is None:
        found = [infer_location(t) for t in texts]
        auto = sum(x is not None for x in found) >= len(found) / 2
        if infer_locations or (infer_locations is None and auto):
            location = found
    if attrs["region"] is None and location is not None:
        attrs["region"] = np.array([infer_region(x) for x in location], object)
    return CandidatePool(texts=texts, ids=ids, location=location, sources=(str(path),), **attrs)
