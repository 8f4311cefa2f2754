"""Rewards: embedders, candidate pools, the diversity reward, gender-coded wording and PII scorers.

numpy only at import time; jax is imported lazily by the Flax encoders (`BertClsEmbedder`,
`SentenceEncoder` / `load_embedder`).
"""
from fairjax.rewards.base import Scorer, ScorerFailure
from fairjax.rewards.diversity import DiversityConfig, DiversityResult, DiversityScorer
from fairjax.rewards.embedders import (BertClsEmbedder, Embedder, HashingTfidfEmbedder, SentenceEncoder,
                                       load_embedder, make_embedder)
from fairjax.rewards.lexicon import GenderCodedScorer, code_text
from fairjax.rewards.pii import PiiScorer, find_pii
from fairjax.rewards.pool import CandidatePool, PoolFields, PoolFormatError, load_pool
from fairjax.rewards.normalize import apply_normalizer, fit_normalizer
from fairjax.rewards.precompute import RewardBuildError, annotate_jsonl, build_rewards, precompute_rewards
from fairjax.rewards.registry import build_reward_scorer, reward_spec

__all__ = [
    "Scorer", "DiversityConfig", "DiversityResult", "DiversityScorer", "BertClsEmbedder", "Embedder",
    "HashingTfidfEmbedder", "GenderCodedScorer", "code_text", "PiiScorer", "find_pii",
    "CandidatePool", "PoolFields", "PoolFormatError", "load_pool", "annotate_jsonl",
    "precompute_rewards", "ScorerFailure", "apply_normalizer", "fit_normalizer", "RewardBuildError",
    "build_rewards", "build_reward_scorer", "reward_spec", "SentenceEncoder", "load_embedder",
    "make_embedder",
]
