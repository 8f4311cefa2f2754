"""The FMs-at-work diversity reward: candidate matching by embeddings (reference §4.4).

For each job text:
1. cosine similarity to every candidate of the pool (rows are L2-normalised, so a matmul), computed
   in chunks of texts; optional **location filter** (upstream rule: keep a candidate if any token of
   the job location — lower-cased, commas removed, 'and' dropped — is a token of the candidate's
   location; candidates without a location are dropped);
2. the top k = 50 eligible candidates (`fairness.top_k_indices`: exact, ties by lower index);
3. demographic shares among them, per attribute the pool labels (gender, region; unlabelled
   candidates are not counted);
4. distance to a target per attribute: gender `uniform` (50/50, upstream), `pool` (the pool's shares)
   or `occupation` (the gender shares of the pool's candidates with the job's profession, upstream
   main HEAD); region `pool` (upstream) or `uniform`;
5. reward = −100 · Σ_attributes distance.

Distance modes (`fairness.share_distance`): `signed_tv` (default) = total variation between the share
vectors; `paper` = scipy `wasserstein_distance` on the share *values*, which is what upstream
computed. Upstream's measure is symmetric — 70/30 and 30/70 women/men score the same, and for regions
it ignores which region is which — so it rewards "balanced-looking" numbers, not the target mix; we
keep it only to reproduce published numbers (upstream bug, fixed by the default).

No eligible candidate (location filter removed all, the text has no embedding features — empty
text, or only symbols the embedder ignores: an all-zero vector, which matches nobody rather than the
first k candidates of the file —, or an attribute has no labelled candidate in the top k): reward = −100 and NaN shares/rates for that text, as upstream's q = −100 (with scipy's
infinite distance upstream mapped to D = 10, i.e. −1000; we keep −100 which the datasets also used).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Optional, Sequence

import numpy as np

from fairjax.eval import fairness
from fairjax.rewards.base import ScorerFailure
from fairjax.rewards.embedders import Embedder, HashingTfidfEmbedder
from fairjax.rewards.matching import sharded_top_k
from fairjax.rewards.pool import GENDERS, REGIONS, CandidatePool, location_tokens

NO_MATCH_REWARD = -100.0
TARGETS = {"gender": ("uniform", "pool", "occupation"), "region": ("uniform", "pool")}


@dataclasses.dataclass(frozen=True)
class DiversityConfig:
    k: int = 50                    # candidates matched per text (the pool P of the impact ratio)
    select_k: int = 10             # selected set S for selection rates / impact ratios
    distance: str = "signed_tv"    # 'signed_tv' | 'paper'
    attributes: tuple[str, ...] = ("gender", "region")  # used when the pool labels them
    gender_target: str = "uniform"
    region_target: str = "pool"
    location_filter: bool = False
    chunk_size: int = 1000         # texts per similarity block ([chunk, M] float32 in memory)
    matching: str = "numpy"        # 'numpy' | 'shard_map' (pool split over the local devices,
    #                                local top-k + merge: `fairjax.rewards.matching`, large pools)

    def __post_init__(self):
        if self.distance not in fairness.DISTANCES:
            raise ValueError(f"distance={self.distance!r}; expected one of {list(fairness.DISTANCES)}")
        if not 0 < self.select_k <= self.k:
            raise ValueError(f"need 0 < select_k <= k, got select_k={self.select_k}, k={self.k}")
        for a, t in (("gender", self.gender_target), ("region", self.region_target)):
            if t not in TARGETS[a]:
                raise ValueError(f"{a}_target={t!r}; expected one of {list(TARGETS[a])}")
        if self.matching not in ("numpy", "shard_map"):
            raise ValueError(f"matching={self.matching!r}; expected 'numpy' or 'shard_map'")
        for a in self.attributes:
            if a not in TARGETS:
                raise ValueError(f"attribute {a!r}; expected a subset of {list(TARGETS)}")


@dataclasses.dataclass(frozen=True)
class DiversityRewardConfig:
    """`reward.diversity` (configs/common.py): the matching settings of the diversity reward
    (`scorer_config()`, checked by DiversityConfig) and the hashing TF-IDF dimension `n_features`
    (the embedder's, used when reward.embedder=tfidf)."""

    k: int = 50
    select_k: int = 10
    distance: str = "signed_tv"
    gender_target: str = "uniform"
    region_target: str = "pool"
    n_features: int = 4096

    def __post_init__(self):
        self.scorer_config()  # ValueError naming the bad setting
        if int(self.n_features) <= 0:
            raise ValueError(f"n_features={self.n_features}: expected > 0")

    def scorer_config(self) -> DiversityConfig:
        return DiversityConfig(k=self.k, select_k=self.select_k, distance=self.distance,
                               gender_target=self.gender_target, region_target=self.region_target)


@dataclasses.dataclass
class DiversityResult:
    """Per-text outputs for N texts. shares/targets/distance/rates are keyed by attribute."""

    reward: np.ndarray                      # [N] float64
    n_matched: np.ndarray                   # [N] eligible candidates in the top k
    shares: dict[str, np.ndarray]           # attr -> [N, G] (NaN rows: no labelled match)
    targets: dict[str, np.ndarray]          # attr -> [N, G]
    distance: dict[str, np.ndarray]         # attr -> [N]
    rates: dict[str, dict[str, np.ndarray]]  # attr -> {"sr_<g>": [N], "ir_<g>": [N]}
    groups: dict[str, list[str]]            # attr -> group names (column order of shares)
    counts: dict[str, tuple[np.ndarray, np.ndarray]] = dataclasses.field(default_factory=dict)
    # attr -> (selected [N, G], pool [N, G]) member counts (fairness.selection_table input)
    top_idx: Optional[np.ndarray] = None    # [N, k] matched candidates, best first (if kept)


class DiversityScorer:
    """`score_texts(texts) -> [N]` diversity reward; `evaluate(...)` for the full breakdown.

    A `HashingTfidfEmbedder` without idf is fitted on the pool texts. Pool embeddings are cached
    on disk under `cache_dir` (see `CandidatePool.embeddings`).
    """

    def __init__(self, pool: CandidatePool, embedder: Optional[Embedder] = None,
                 config: DiversityConfig = DiversityConfig(),
                 cache_dir: Optional[str | os.PathLike] = None, strict: bool = False):
        self.strict = strict  # score_texts raises ScorerFailure on a text with no labelled match
        if len(pool) == 0:
            raise ValueError("the candidate pool is empty")
        self.pool, self.config = pool, config
        self.embedder = embedder if embedder is not None else HashingTfidfEmbedder()
        pool_emb = None
        if isinstance(self.embedder, HashingTfidfEmbedder) and self.embedder.idf is None:
            if cache_dir is None:  # featurise the pool once for idf and vectors
                pool_emb = self.embedder.fit_embed(pool.texts)
            else:
                self.embedder.fit(pool.texts)
        self.name = f"diversity_{config.distance}"
        self.attrs: list[str] = [a for a in config.attributes if pool.labels(a) is not None]
        if not self.attrs:
            raise ValueError(f"the pool labels none of {list(config.attributes)}; "
                             f"pool: {pool.describe()}")
        self.codes: dict[str, np.ndarray] = {}
        self.names: dict[str, list[str]] = {}
        for a in self.attrs:
            known = list(GENDERS) if a == "gender" else list(REGIONS)
            self.codes[a], self.names[a] = fairness.encode_groups(pool.labels(a), known)
        if pool_emb is None:
            pool_emb = pool.embeddings(self.embedder, cache_dir)
        self.pool_emb = pool_emb  # [M, D]
        self._loc_index: Optional[dict[str, np.ndarray]] = None

    # ------------------------------------------------------------------ targets / filters
    def _pool_shares(self, attr: str, subset: Optional[np.ndarray] = None) -> np.ndarray:
        codes = self.codes[attr] if subset is None else self.codes[attr][subset]
        codes = codes[codes >= 0]
        return fairness.group_shares(np.bincount(codes, minlength=len(self.names[attr])))

    def targets(self, attr: str, n: int, occupations: Optional[Sequence[str]] = None) -> np.ndarray:
        """Target shares [n, G] for attribute `attr`."""
        mode = self.config.gender_target if attr == "gender" else self.config.region_target
        g = len(self.names[attr])
        if mode == "uniform":
            return np.full((n, g), 1.0 / g)
        if mode == "pool":
            return np.broadcast_to(self._pool_shares(attr), (n, g)).copy()
        # occupation: gender shares among pool candidates with the job's profession
        if occupations is None or len(occupations) != n:
            raise ValueError("gender_target='occupation' needs one occupation per text")
        prof = self.pool.profession
        if prof is None:
            raise ValueError("gender_target='occupation' needs a pool with a profession field")
        table: dict[str, np.ndarray] = {}
        out = np.empty((n, g))
        for i, occ in enumerate(occupations):
            key = str(occ).strip().lower().replace(" ", "_")
            if key not in table:
                sel = prof == key
                if not sel.any():
                    raise ValueError(f"occupation {occ!r} (text {i}) has no candidate in the pool; "
                                     f"known: {sorted(set(prof.tolist()) - {''})}")
                table[key] = self._pool_shares(attr, sel)
            out[i] = table[key]
        return out

    def _location_mask(self, locations: Sequence[Optional[str]]) -> np.ndarray:
        """[n, M] bool: candidate eligible under the upstream token-overlap rule."""
        if self.pool.location is None:
            raise ValueError("location_filter=True needs candidate locations; this pool has none")
        if self._loc_index is None:
            index: dict[str, list[int]] = {}
            for j, loc in enumerate(self.pool.location):
                for tok in location_tokens(loc):
                    index.setdefault(tok, []).append(j)
            self._loc_index = {t: np.array(v, np.int64) for t, v in index.items()}
        mask = np.zeros((len(locations), len(self.pool)), bool)
        for i, loc in enumerate(locations):
            for tok in location_tokens(loc):
                hit = self._loc_index.get(tok)
                if hit is not None:
                    mask[i, hit] = True
        return mask

    # ------------------------------------------------------------------ scoring
    def evaluate(self, texts: Sequence[str], locations: Optional[Sequence[Optional[str]]] = None,
                 occupations: Optional[Sequence[str]] = None,
                 embeddings: Optional[np.ndarray] = None, keep_top: bool = False) -> DiversityResult:
        """Full per-text breakdown. embeddings: optional precomputed [N, D] text embeddings."""
        cfg = self.config
        n = len(texts)
        if cfg.location_filter and (locations is None or len(locations) != n):
            raise ValueError("location_filter=True needs one location per text")
        emb = self.embedder.embed(list(texts)) if embeddings is None else np.asarray(embeddings, np.float32)
        if emb.shape != (n, self.pool_emb.shape[1]):
            raise ValueError(f"text embeddings have shape {emb.shape}, expected {(n, self.pool_emb.shape[1])}")
        k = min(cfg.k, len(self.pool))
        top_all = np.zeros((n, k), np.int64)
        valid_all = np.zeros((n, k), bool)
        for s in range(0, n, cfg.chunk_size):
            eligible = (self._location_mask(locations[s:s + cfg.chunk_size])
                        if cfg.location_filter else None)
            if cfg.matching == "shard_map":
                top, valid = sharded_top_k(emb[s:s + cfg.chunk_size], self.pool_emb, k, eligible)
            else:
                sim = emb[s:s + cfg.chunk_size] @ self.pool_emb.T  # [c, M]
                if eligible is not None:
                    sim[~eligible] = -np.inf
                top = fairness.top_k_indices(sim, k)
                valid = np.isfinite(np.take_along_axis(sim, top, axis=1))
            top_all[s:s + len(top)] = top
            valid_all[s:s + len(top)] = valid
        # A text with no embedding features (empty, or only unseen symbols) is an all-zero row:
        # every similarity ties at 0 and the top k would be the first k candidates in file order.
        # It matches no candidate instead (n_matched 0, reward NO_MATCH_REWARD, counted by callers).
        valid_all[~np.any(emb != 0, axis=1)] = False
        shares, targets, dist, rates, counts = {}, {}, {}, {}, {}
        total = np.zeros(n)
        for a in self.attrs:
            g = len(self.names[a])
            shares[a] = fairness.group_shares(fairness.member_counts(top_all, self.codes[a], g, valid_all))
            targets[a] = self.targets(a, n, occupations)
            dist[a] = fairness.share_distance(shares[a], targets[a], cfg.distance)
            rates[a] = fairness.rates_from_ranking(top_all, valid_all, self.codes[a], self.names[a],
                                                   cfg.select_k)
            counts[a] = fairness.selection_counts(top_all, valid_all, self.codes[a], g, cfg.select_k)
            total += dist[a]
        reward = -100.0 * total
        reward[np.isnan(reward)] = NO_MATCH_REWARD  # no (labelled) candidate matched
        return DiversityResult(reward=reward, n_matched=valid_all.sum(axis=1), shares=shares,
                               targets=targets, distance=dist, rates=rates, groups=dict(self.names),
                               counts=counts, top_idx=top_all if keep_top else None)

    def score_texts(self, texts: Sequence[str]) -> np.ndarray:
        """texts [N] -> diversity reward [N] float64 (no location filter information: uses none)."""
        if self.config.location_filter:
            raise ValueError("this scorer filters by location: call evaluate(texts, locations=...)")
        res = self.evaluate(texts)
        if self.strict:
            for a in self.attrs:
                bad = np.nonzero(np.isnan(res.distance[a]))[0]
                if bad.size:
                    i = int(bad[0])
                    why = ("the text has no embedding features (empty?) and matches no candidate"
                           if res.n_matched[i] == 0 else
                           f"none of the top {self.config.k} candidates has a {a} label "
                           f"({int(res.n_matched[i])} eligible matches)")
                    raise ScorerFailure(i, f"empty candidate match: {why}")
        return res.reward
