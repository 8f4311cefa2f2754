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
(`embedders.make_embedder` builds it: tfidf, a sentence-transformers preset or directory,
bert-cls:DIR).

The config's `reward` block is typed once, `reward_config(cfg.reward) -> RewardConfig` (its
sub-blocks: `diversity.DiversityRewardConfig`, `lexicon.GenderCodedConfig`, `PreservationConfig`,
`CompositeConfig`, `constrained.ConstrainedConfig`, each checking its values against the module
that implements it); everything here and in `training.py` takes that RewardConfig.

`reward_spec(reward)` is the JSON-ready description of the reward (the settings that change the
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

from fairjax.errors import ConfigError
from fairjax.eval import preservation
from fairjax.rewards.base import Scorer
from fairjax.rewards.constrained import ConstrainedConfig, ConstrainedScorer
from fairjax.rewards.diversity import DiversityRewardConfig, DiversityScorer
from fairjax.rewards.embedders import BERT_CLS_PREFIX, TFIDF_NAMES, config_embedder, make_embedder
from fairjax.rewards.lexicon import GenderCodedConfig, GenderCodedScorer
from fairjax.rewards.normalize import MODES as NORMALIZE_MODES
from fairjax.rewards.pii import PiiScorer
from fairjax.rewards.pool import CandidatePool, load_pool
from fairjax.typed_config import check_choice, typed_block

RUN_SPEC_FILE = "reward_spec.json"  # in a run dir: the trained reward's spec (+ normalize, cache)
RUN_NORMALIZER_FILE = "reward_normalizer.json"  # in a run dir: normalize.fit_normalizer stats
DEMO_STANDIN = ("demo stand-in lexical reward −10·|#agentic − #communal phrases| "
                "(fairjax/data/demo/generator.py), not the diversity reward")
SCORERS = ("diversity", "gender_coded", "pii", "preservation", "composite", "constrained")
TERMS = SCORERS[:4]
PRESERVATION_METRICS = ("cosine", "chrf")


def split_list(s: Any) -> tuple[str, ...]:
    """"a, b" or a sequence -> ("a", "b") (empty items dropped)."""
    if isinstance(s, (list, tuple)):
        return tuple(str(x).strip() for x in s if str(x).strip())
    return tuple(x.strip() for x in str(s or "").split(",") if x.strip())


@dataclasses.dataclass(frozen=True)
class PreservationConfig:
    """`reward.preservation`: the metric of PreservationScorer."""

    metric: str = "cosine"  # cosine (the reward's embedder) | chrf (/ 100)

    def __post_init__(self):
        if self.metric not in PRESERVATION_METRICS:
            raise ValueError(f"metric={self.metric!r}; expected one of {list(PRESERVATION_METRICS)}")


@dataclasses.dataclass(frozen=True)
class CompositeConfig:
    """`reward.composite`: terms [n] (each one of TERMS) and their weights [n]; a config gives
    both as comma-separated strings ("diversity,preservation", "1,20"); no weights: all 1."""

    terms: tuple[str, ...] = ()
    weights: tuple[float, ...] = ()

    def __post_init__(self):
        terms, raw = split_list(self.terms), split_list(self.weights)
        bad = [t for t in terms if t not in TERMS]
        if bad:
            raise ValueError(f"terms={','.join(terms)!r}: {bad} not in {list(TERMS)}")
        if len(set(terms)) != len(terms):
            raise ValueError(f"terms={','.join(terms)!r} repeats a term")
        raw = raw or ("1",) * len(terms)
        if len(raw) != len(terms):
            raise ValueError(f"weights has {len(raw)} values for {len(terms)} terms "
                             f"{list(terms)}: give one weight per term")
        try:
            weights = tuple(float(w) for w in raw)
        except ValueError:
            raise ValueError(f"weights={list(raw)}: not numbers") from None
        object.__setattr__(self, "terms", terms)
        object.__setattr__(self, "weights", weights)

    def items(self) -> list[tuple[str, float]]:
        """[(term, weight)]."""
        return list(zip(self.terms, self.weights))


@dataclasses.dataclass(frozen=True)
class RewardConfig:
    """The `reward` block of a run config, typed once by `reward_config(cfg.reward)`
    (configs/common.py documents every field). A field that a saved config lacks takes the
    default here: `scorer` "" (the data's own field), `embedder` tfidf and `constrained.tau` its
    tfidf calibration (what runs written before those keys were scored with)."""

    field: str = "reward"
    scorer: str = ""  # one of SCORERS, "" = the records' own `field`
    pool: tuple[str, ...] = ()  # candidate pool JSONL(s); a comma-separated string is split
    normalize: str = "none"  # normalize.MODES
    cache_dir: str = ""  # "" = ~/.cache/fairjax/rewards (training.reward_cache_dir)
    embedder: str = "tfidf"  # embedders.make_embedder name ("" = tfidf)
    diversity: DiversityRewardConfig = dataclasses.field(default_factory=DiversityRewardConfig)
    gender_coded: GenderCodedConfig = dataclasses.field(default_factory=GenderCodedConfig)
    preservation: PreservationConfig = dataclasses.field(default_factory=PreservationConfig)
    composite: CompositeConfig = dataclasses.field(default_factory=CompositeConfig)
    constrained: ConstrainedConfig = dataclasses.field(default_factory=ConstrainedConfig)

    def __post_init__(self):
        object.__setattr__(self, "scorer", str(self.scorer or ""))
        object.__setattr__(self, "pool", split_list(self.pool))
        object.__setattr__(self, "normalize", str(self.normalize or "none"))
        object.__setattr__(self, "cache_dir", str(self.cache_dir or ""))
        object.__setattr__(self, "embedder", config_embedder(self.embedder))
        check_choice("reward.scorer", self.scorer, ("",) + SCORERS)
        check_choice("reward.normalize", self.normalize, NORMALIZE_MODES)
        if self.scorer == "composite" and not self.composite.terms:
            raise ConfigError("config.reward.composite.terms is empty: give e.g. "
                              "'diversity,preservation'")

    def uses(self, term: str) -> bool:
        """The reward is `term` or a composite with that term."""
        return self.scorer == term or (self.scorer == "composite" and term in self.composite.terms)


_SUB_BLOCKS = {"diversity": DiversityRewardConfig, "gender_coded": GenderCodedConfig,
               "preservation": PreservationConfig, "composite": CompositeConfig,
               "constrained": ConstrainedConfig}


def reward_config(block: Any) -> RewardConfig:
    """`cfg.reward` (ConfigDict, mapping, None or a RewardConfig) as a RewardConfig: an unknown
    field raises ConfigError naming config.reward.<field> (config.reward.<sub>.<field> in a
    sub-block), a bad value names its block; absent fields take the defaults."""
    convert = {k: (lambda b, k=k, c=c: typed_block(b, c, f"reward.{k}"))
               for k, c in _SUB_BLOCKS.items()}
    return typed_block(block, RewardConfig, "reward", convert=convert)


def pool_paths(reward: RewardConfig, default_pool: Optional[str] = None) -> list[str]:
    """The candidate pool files of `reward.pool` (else `default_pool`), each checked to exist."""
    paths = list(reward.pool) or ([default_pool] if default_pool else [])
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


def embedder_spec(name: str) -> dict[str, Any]:
    """What identifies an embedder in a reward spec: its name, and for a directory its absolute
    path (left out of the spec hash) and a hash of its config and weight files."""
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


def reward_spec(reward: RewardConfig, default_pool: Optional[str] = None) -> dict[str, Any]:
    """What defines the scores of `reward.scorer` (JSON-ready; see module docstring)."""
    name = reward.scorer
    if not name:
        raise ValueError(f"config.reward.scorer=''; expected one of {list(SCORERS)}")
    spec: dict[str, Any] = {"scorer": name, "higher_is_better": True}
    if name == "composite":
        spec["terms"] = [{"term": t, "weight": w} for t, w in reward.composite.items()]
    if reward.uses("diversity") or reward.uses("preservation") or name == "constrained":
        spec["diversity"] = dataclasses.asdict(reward.diversity)
        spec["embedder"] = embedder_spec(reward.embedder)
        if spec["embedder"]["name"] != "tfidf":
            spec["diversity"].pop("n_features", None)  # the hashing dimension plays no part
        paths = pool_paths(reward, default_pool)
        spec["pools"] = [{"path": os.path.abspath(p), "sha256": file_sha256(p)} for p in paths]
    if reward.uses("gender_coded"):
        spec["gender_coded"] = {"mode": reward.gender_coded.mode}
    if reward.uses("preservation"):
        spec["preservation"] = {"metric": reward.preservation.metric}
    if name == "constrained":
        spec["constrained"] = dataclasses.asdict(reward.constrained)
    return spec


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
    METRICS = PRESERVATION_METRICS

    def __init__(self, embedder: Any, metric: str = "cosine"):
        PreservationConfig(metric)  # ValueError for another metric
        self.embedder, self.metric = embedder, metric
        self.name = f"preservation_{metric}" + (f"({embedder.id})" if metric == "cosine" else "")

    def score_texts(self, texts: Sequence[str], references: Optional[Sequence[str]] = None) -> np.ndarray:
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


def build_reward_scorer(reward: RewardConfig, default_pool: Optional[str] = None,
                        cache_dir: Optional[str] = None, strict: bool = True) -> Any:
    """The scorer named by `reward.scorer`. `strict`: the diversity reward fails on a text with no
    labelled candidate match instead of scoring it −100."""
    reward_spec(reward, default_pool)  # validates the scorer and the pool paths
    built: dict[str, Any] = {}

    def diversity():
        if "diversity" not in built:
            pool = CandidatePool.concat([load_pool(p) for p in pool_paths(reward, default_pool)])
            emb = make_embedder(reward.embedder, int(reward.diversity.n_features))
            built["diversity"] = DiversityScorer(pool, emb, reward.diversity.scorer_config(),
                                                 cache_dir=cache_dir, strict=strict)
        return built["diversity"]

    def term(t: str):
        if t == "diversity":
            return diversity()
        if t == "gender_coded":
            return NegatedScorer(GenderCodedScorer(reward.gender_coded.mode), True)
        if t == "pii":
            return NegatedScorer(PiiScorer(), False)
        return PreservationScorer(diversity().embedder, reward.preservation.metric)

    if reward.scorer == "composite":
        return CompositeScorer([(t, w, term(t)) for t, w in reward.composite.items()])
    if reward.scorer == "constrained":
        return ConstrainedScorer(diversity(), reward.constrained, strict=strict)
    return term(reward.scorer)


def trained_reward(run_cfg: Any, run_dir: Optional[str | os.PathLike] = None,
                   trains_on_reward: bool = True) -> dict[str, Any]:
    """What a run trained on (for summaries): its RUN_SPEC_FILE when written, else its config
    (`run_cfg`, the run's saved config: its reward block is typed here; `trains_on_reward`: the
    objective's capability, `agents.registry.Objective`)."""
    if run_dir is not None and os.path.isfile(os.path.join(run_dir, RUN_SPEC_FILE)):
        with open(os.path.join(run_dir, RUN_SPEC_FILE), encoding="utf-8") as f:
            return json.load(f)
    if not trains_on_reward:
        return {"scorer": "none", "note": f"{run_cfg.get('algorithm', '')} imitates the "
                                          "postings; it trains on no reward"}
    reward = reward_config(run_cfg.get("reward"))
    if reward.scorer:
        return {"scorer": reward.scorer, "normalize": reward.normalize}
    train = (run_cfg.get("data") or {}).get("train", "")
    if not train:
        return {"scorer": "demo_standin", "note": DEMO_STANDIN}
    return {"scorer": "data_field", "field": reward.field, "data": train,
            "note": "rewards precomputed into the data; their scorer is whatever wrote the field"}
