"""Build the training reward from the config: `reward.scorer` ∈ diversity | gender_coded | pii |
preservation | composite | constrained (numpy only; BERT embedders import jax lazily).

Every reward built here is "higher = better":

* `diversity`     the FMs-at-work candidate-diversity reward (−100 · Σ_attr share distance of the
                  top-k matched candidates to the target), `reward.diversity.*` settings, candidate
                  pools `reward.pool` (comma-separated JSONL); a text with no labelled match fails;
* `gender_coded`  −|coded ratio| (or −|masc − fem| for mode=difference) of the Gaucher et al. lexicon;
* `pii`           −(contact-data characters per character);
* `preservation`  content kept from the original posting (`reward.preservation.metric`: `cosine`
                  under the reward's embedder, in [0, 1] for hashing vectors; or `chrf` / 100); needs
                  the original as reference (1 for an offline record, whose text *is* the original);
* `composite`     Σ_i w_i · term_i with `reward.composite.terms` ("diversity,preservation") and
                  `reward.composite.weights` ("1,20"), each term one of the scorers above;
* `constrained`   the faithful-rewrite reward (`constrained.py`): the fairness term (diversity,
                  optionally + gender-coded wording) counts only when the rewrite's similarity to
                  the original is ≥ `reward.constrained.tau` and its header fields are kept;
                  otherwise a floor below every faithful reward (`form=hard`) or a penalty
                  (`form=smooth`); needs the original as reference (a record's `original` field).

The diversity matching and the preservation cosine share one embedder, `reward.embedder`
(`embedder_name`; `embedders.make_embedder` builds it: tfidf, a sentence-transformers preset or
directory, bert-cls:DIR).

`reward_spec(cfg_reward)` is the JSON-ready description of the reward (the settings that change the
scores, plus the sha256 of each pool file): its hash keys the reward cache (precompute.py) and it
is what summaries report as `trained_reward`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, Optional, Sequence

import numpy as np

from fairjax.rewards.base import Scorer

RUN_SPEC_FILE = "reward_spec.json"  # in a run dir: the trained reward's spec (+ normalize, cache)
RUN_NORMALIZER_FILE = "reward_normalizer.json"  # in a run dir: normalize.fit_normalizer stats
DEMO_STANDIN = ("demo stand-in lexical reward −10·|#agentic − #communal phrases| "
                "(fairjax/data/demo/generator.py), not the diversity reward")
SCORERS = ("diversity", "gender_coded", "pii", "preservation", "composite", "constrained")
TERMS = SCORERS[:4]
CONSTRAINED_FIELDS = ("form", "tau", "diversity_weight", "gender_coded_weight", "margin", "penalty",
                      "header_penalty")


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    """cfg.key for a ConfigDict/dict/namespace (dotted keys), default when absent."""
    cur = cfg
    for part in key.split("."):
        if cur is None:
            return default
        cur = cur.get(part, None) if isinstance(cur, dict) or hasattr(cur, "get") else getattr(cur, part, None)
    return default if cur is None else cur


def _split(s: Any) -> list[str]:
    if isinstance(s, (list, tuple)):
        return [str(x).strip() for x in s if str(x).strip()]
    return [x.strip() for x in str(s or "").split(",") if x.strip()]


def composite_terms(cfg: Any) -> list[tuple[str, float]]:
    """[(term, weight)] from reward.composite.terms / weights (validated, naming the bad key)."""
    terms = _split(_get(cfg, "composite.terms", ""))
    raw_w = _split(_get(cfg, "composite.weights", ""))
    if not terms:
        raise ValueError("config.reward.composite.terms is empty: give e.g. 'diversity,preservation'")
    bad = [t for t in terms if t not in TERMS]
    if bad:
        raise ValueError(f"config.reward.composite.terms: {bad} not in {list(TERMS)}")
    if len(set(terms)) != len(terms):
        raise ValueError(f"config.reward.composite.terms repeats a term: {terms}")
    if not raw_w:
        raw_w = ["1"] * len(terms)
    if len(raw_w) != len(terms):
        raise ValueError(f"config.reward.composite.weights has {len(raw_w)} values for "
                         f"{len(terms)} terms {terms}: give one weight per term")
    try:
        weights = [float(w) for w in raw_w]
    except ValueError:
        raise ValueError(f"config.reward.composite.weights={raw_w}: not numbers") from None
    return list(zip(terms, weights))


def pool_paths(cfg: Any, default_pool: Optional[str] = None) -> list[str]:
    paths = _split(_get(cfg, "pool", "")) or ([default_pool] if default_pool else [])
    if not paths:
        raise ValueError("config.reward.pool is empty and there is no default candidate pool: give "
                         "the candidate pool JSONL(s) for the diversity reward")
    for p in paths:
        if not os.path.isfile(p):
            raise ValueError(f"config.reward.pool: {p}: no such file")
    return paths


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _uses(cfg: Any, term: str) -> bool:
    name = _get(cfg, "scorer", "")
    return name == term or (name == "composite" and term in dict(composite_terms(cfg)))


def embedder_name(cfg: Any) -> str:
    """`reward.embedder` ("tfidf" when the key is absent: configs written before it existed)."""
    return str(_get(cfg, "embedder", "tfidf")).strip() or "tfidf"


def embedder_spec(name: str) -> dict[str, Any]:
    """What identifies an embedder in a reward spec: its name, and for a directory its absolute
    path (left out of the spec hash) and a hash of its config and weight files."""
    from fairjax.rewards.embedders import BERT_CLS_PREFIX, TFIDF_NAMES

    if name in TFIDF_NAMES:
        return {"name": "tfidf"}
    path = name[len(BERT_CLS_PREFIX):] if name.startswith(BERT_CLS_PREFIX) else name
    if not os.path.isdir(os.path.expanduser(path)):
        return {"name": name}  # a preset: its files are sha256-checked by fairjax.io.presets
    files = [os.path.join(path, f) for f in sorted(os.listdir(path))
             if f.endswith((".json", ".safetensors"))]
    for sub in ("1_Pooling",):
        if os.path.isfile(os.path.join(path, sub, "config.json")):
            files.append(os.path.join(path, sub, "config.json"))
    h = hashlib.sha256()
    for f in files:
        h.update(os.path.basename(f).encode())
        h.update(file_sha256(f).encode())
    return {"name": name.split(":", 1)[0] if name.startswith(BERT_CLS_PREFIX) else "directory",
            "path": os.path.abspath(os.path.expanduser(path)), "sha256": h.hexdigest()}


def reward_spec(cfg: Any, default_pool: Optional[str] = None) -> dict[str, Any]:
    """What defines the scores of `reward.scorer` (JSON-ready; see module docstring)."""
    name = _get(cfg, "scorer", "")
    if name not in SCORERS:
        raise ValueError(f"config.reward.scorer={name!r}; expected one of {list(SCORERS)}")
    spec: dict[str, Any] = {"scorer": name, "higher_is_better": True}
    if name == "composite":
        spec["terms"] = [{"term": t, "weight": w} for t, w in composite_terms(cfg)]
    if _uses(cfg, "diversity") or _uses(cfg, "preservation") or name == "constrained":
        d = {k: _get(cfg, f"diversity.{k}") for k in ("k", "select_k", "distance", "gender_target",
                                                     "region_target", "n_features")}
        spec["diversity"] = {k: v for k, v in d.items() if v is not None}
        spec["embedder"] = embedder_spec(embedder_name(cfg))
        if spec["embedder"]["name"] != "tfidf":
            spec["diversity"].pop("n_features", None)  # the hashing dimension plays no part
        paths = pool_paths(cfg, default_pool)
        spec["pools"] = [{"path": os.path.abspath(p), "sha256": file_sha256(p)} for p in paths]
    if _uses(cfg, "gender_coded"):
        spec["gender_coded"] = {"mode": _get(cfg, "gender_coded.mode", "ratio")}
    if _uses(cfg, "preservation"):
        spec["preservation"] = {"metric": _get(cfg, "preservation.metric", "cosine")}
    if name == "constrained":
        spec["constrained"] = dataclasses.asdict(constrained_config(cfg))
    return spec


def constrained_config(cfg: Any):
    """`reward.constrained` as a validated `ConstrainedConfig` (fields absent from cfg: defaults)."""
    from fairjax.rewards.constrained import ConstrainedConfig

    kw = {k: _get(cfg, f"constrained.{k}") for k in CONSTRAINED_FIELDS}
    return ConstrainedConfig(**{k: v for k, v in kw.items() if v is not None})


def spec_hash(spec: Any) -> str:
    """sha256 of the canonical JSON of `spec` (the pools' absolute paths are left out, their
    content hashes stay, so moving a pool file keeps the cache)."""
    def strip(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if k != "path"}
        if isinstance(x, list):
            return [strip(v) for v in x]
        return x
    return hashlib.sha256(json.dumps(strip(spec), sort_keys=True).encode()).hexdigest()


class NegatedScorer:
    """−|s| (absolute=True) or −s of a "higher = worse" scorer, so the reward is higher = better."""

    def __init__(self, base: Scorer, absolute: bool):
        self.base, self.absolute = base, absolute
        self.name = f"neg{'_abs' if absolute else ''}({base.name})"

    def score_texts(self, texts: Sequence[str]) -> np.ndarray:  # [N] -> [N]
        s = np.asarray(self.base.score_texts(texts), np.float64)
        return -np.abs(s) if self.absolute else -s


class PreservationScorer:
    """Content kept from the original: cosine of embedder vectors (or chrF / 100). [N] in [−1, 1]."""

    needs_reference = True
    METRICS = ("cosine", "chrf")

    def __init__(self, embedder: Any, metric: str = "cosine"):
        if metric not in self.METRICS:
            raise ValueError(f"config.reward.preservation.metric={metric!r}; expected one of "
                             f"{list(self.METRICS)}")
        self.embedder, self.metric = embedder, metric
        self.name = f"preservation_{metric}" + (f"({embedder.id})" if metric == "cosine" else "")

    def score_texts(self, texts: Sequence[str], references: Optional[Sequence[str]] = None) -> np.ndarray:
        from fairjax.eval import preservation

        if references is None or len(references) != len(texts):
            raise ValueError("the preservation reward needs one original (reference) per text")
        if self.metric == "chrf":
            return preservation.chrf(texts, references) / 100.0
        out = preservation.cosine_rows(self.embedder.embed(list(texts)), self.embedder.embed(list(references)))
        return np.where(np.isnan(out), 0.0, out)  # an empty text keeps nothing


class CompositeScorer:
    """Σ_i w_i · term_i(texts) [N]; references go to the terms that need them."""

    def __init__(self, terms: Sequence[tuple[str, float, Any]]):
        self.terms = list(terms)
        self.needs_reference = any(getattr(s, "needs_reference", False) for _, _, s in self.terms)
        self.name = "composite(" + "+".join(f"{w:g}*{s.name}" for _, w, s in self.terms) + ")"

    def score_texts(self, texts: Sequence[str], references: Optional[Sequence[str]] = None) -> np.ndarray:
        total = np.zeros(len(texts), np.float64)
        for _, w, s in self.terms:
            v = (s.score_texts(texts, references) if getattr(s, "needs_reference", False)
                 else s.score_texts(texts))
            total += w * np.asarray(v, np.float64)
        return total


def build_reward_scorer(cfg: Any, default_pool: Optional[str] = None,
                        cache_dir: Optional[str] = None, strict: bool = True) -> Any:
    """The scorer named by `cfg.reward` (the reward section). `strict`: the diversity reward fails on a
    text with no labelled candidate match instead of scoring it −100."""
    reward_spec(cfg, default_pool)  # validates the names, weights and pool paths
    name = _get(cfg, "scorer", "")
    built: dict[str, Any] = {}

    def diversity():
        if "diversity" not in built:
            from fairjax.rewards.diversity import DiversityConfig, DiversityScorer
            from fairjax.rewards.embedders import make_embedder
            from fairjax.rewards.pool import CandidatePool, load_pool

            d = {k: _get(cfg, f"diversity.{k}") for k in ("k", "select_k", "distance",
                                                         "gender_target", "region_target")}
            dcfg = DiversityConfig(**{k: v for k, v in d.items() if v is not None})
            pool = CandidatePool.concat([load_pool(p) for p in pool_paths(cfg, default_pool)])
            emb = make_embedder(embedder_name(cfg), int(_get(cfg, "diversity.n_features", 4096)))
            built["diversity"] = DiversityScorer(pool, emb, dcfg, cache_dir=cache_dir, strict=strict)
        return built["diversity"]

    def term(t: str):
        if t == "diversity":
            return diversity()
        if t == "gender_coded":
            from fairjax.rewards.lexicon import GenderCodedScorer
            return NegatedScorer(GenderCodedScorer(_get(cfg, "gender_coded.mode", "ratio")), True)
        if t == "pii":
            from fairjax.rewards.pii import PiiScorer
            return NegatedScorer(PiiScorer(), False)
        return PreservationScorer(diversity().embedder, _get(cfg, "preservation.metric", "cosine"))

    if name == "composite":
        return CompositeScorer([(t, w, term(t)) for t, w in composite_terms(cfg)])
    if name == "constrained":
        from fairjax.rewards.constrained import ConstrainedScorer

        return ConstrainedScorer(diversity(), constrained_config(cfg), strict=strict)
    return term(name)


def trained_reward(run_cfg: Any, run_dir: Optional[str | os.PathLike] = None,
                   trains_on_reward: bool = True) -> dict[str, Any]:
    """What a run trained on (for summaries): its RUN_SPEC_FILE when written, else the config
    (`trains_on_reward`: the objective's capability, `agents.registry.Objective`)."""
    if run_dir is not None and os.path.isfile(os.path.join(run_dir, RUN_SPEC_FILE)):
        with open(os.path.join(run_dir, RUN_SPEC_FILE), encoding="utf-8") as f:
            return json.load(f)
    if not trains_on_reward:
        return {"scorer": "none", "note": f"{_get(run_cfg, 'algorithm', '')} imitates the "
                                          "postings; it trains on no reward"}
    name = _get(run_cfg, "reward.scorer", "")
    if name:
        return {"scorer": name, "normalize": _get(run_cfg, "reward.normalize", "none")}
    if not _get(run_cfg, "data.train", ""):
        return {"scorer": "demo_standin", "note": DEMO_STANDIN}
    return {"scorer": "data_field", "field": _get(run_cfg, "reward.field", "reward"),
            "data": _get(run_cfg, "data.train", ""),
            "note": "rewards precomputed into the data; their scorer is whatever wrote the field"}
