"""Rewards: embedders, candidate pools, the diversity reward, gender-coded wording and PII scorers.

numpy only at import time; jax is imported lazily by `BertClsEmbedder`.
"""
from fairjax.rewards.base import Scorer
from fairjax.rewards.diversity import DiversityConfig, DiversityResult, DiversityScorer
from fairjax.rewards.embedders import BertClsEmbedder, Embedder, HashingTfidfEmbedder
from fairjax.rewards.lexicon import GenderCodedScorer, code_text
from fairjax.rewards.pii import PiiScorer, find_pii
from fairjax.rewards.pool import CandidatePool, PoolFields, PoolFormatError, load_pool
from fairjax.rewards.precompute import annotate_jsonl, precompute_rewards

__all__ = [
    "Scorer", "DiversityConfig", "DiversityResult", "DiversityScorer", "BertClsEmbedder", "Embedder",
    "HashingTfidfEmbedder", "GenderCodedScorer", "code_text", "PiiScorer", "find_pii",
    "CandidatePool", "PoolFields", "PoolFormatError", "load_pool", "annotate_jsonl",
    "precompute_rewards",
]
