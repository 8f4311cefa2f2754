"""Dataset transforms of the PHF objectives (Korbak et al. 2023): per-token scores, filtering,
conditional training; numpy only.

Upstream (`tomekkorbak/pretraining-with-human-feedback`, `apo/dataset_wrappers.py`
`ConstantLengthDataset`, see `shared/reference/alol_phf.md` B.1/B.2). A document is
`{"texts": [sentence, ...], "scores": [misalignment score per sentence], "avg_score": mean}`
(higher score = more misaligned). Sentences are tokenized ONE BY ONE; the first sentence of each
document is prefixed with `concat_token` (EOS); every token inherits its sentence's score; tokens
are concatenated across documents and cut into constant-length chunks (the partial tail is dropped).

* Filtering: keep a document iff `avg_score <= threshold` (document level), then MLE.
* Conditional training: per sentence, with probability 1 − drop_token_fraction, prepend
  `<|aligned|>` if score <= threshold else `<|misaligned|>` (a document starts
  `<eos><|aligned|>sentence…`); the control tokens are ordinary inputs AND labels and inherit their
  sentence's score. Generation prefixes `<|aligned|>` and must block both control ids
  (`control_token_ids`; upstream's PEP8 config only blocks one, which we do not copy).
  The control tokens are added to the tokenizer by `add_control_tokens`, and the LM embedding must
  grow accordingly (`resize_for_control_tokens`; new rows = mean row + 0.01·N(0, 1) as upstream;
  the model config's vocab_size changes, so save the new config with the params).

Upstream's 20,000-element shuffle buffer is replaced by an explicit seeded document shuffle.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterable, Iterator, Mapping, Optional, Sequence

import numpy as np

from fairjax.io.tokenizer import _vocab_arrays, resize_embeddings

ALIGNED = "<|aligned|>"
MISALIGNED = "<|misaligned|>"
CONTROL_TOKENS = (ALIGNED, MISALIGNED)


@dataclasses.dataclass(frozen=True)
class ConditionalConfig:
    """threshold: aligned iff score <= threshold; drop_token_fraction: P(no control token).

    Upstream configs: toxicity (0.00056, 0.01), PII (0.0, 0.01), PEP8 (0, 0.1).
    """

    aligned_id: int
    misaligned_id: int
    threshold: float
    drop_token_fraction: float = 0.0

    def __post_init__(self):
        if not 0.0 <= self.drop_token_fraction <= 1.0:
            raise ValueError(f"ConditionalConfig.drop_token_fraction: expected in [0, 1], got "
                             f"{self.drop_token_fraction}")


def document_score(doc: Mapping, key: str = "avg_score") -> float:
    """The document-level score `doc[key]`, or the mean of `doc["scores"]` when `key` is absent."""
    if key in doc:
        return float(doc[key])
    if "scores" in doc and len(doc["scores"]):
        return float(np.mean(np.asarray(doc["scores"], np.float64)))
    raise KeyError(f"PHF document has neither {key!r} nor a non-empty 'scores' list "
                   f"(keys: {sorted(doc)})")


def filter_documents(docs: Iterable[Mapping], threshold: float,
                     key: str = "avg_score") -> Iterator[Mapping]:
    """PHF filtering: yield the documents with `document_score(doc) <= threshold`.

    Upstream thresholds ("filtering median"): toxicity 0.00078, PII 0.000286, PEP8 0.002361.
    """
    for doc in docs:
        if document_score(doc, key) <= threshold:
            yield doc


def control_token(score: float, cond: ConditionalConfig, rng: np.random.Generator) -> list[int]:
    """[] with probability drop_token_fraction, else [aligned_id] or [misaligned_id]."""
    if rng.random() > cond.drop_token_fraction:  # upstream: `random.random() > drop_token_fraction`
        return [cond.aligned_id if score <= cond.threshold else cond.misaligned_id]
    return []


def document_tokens(texts: Sequence[str], scores: Sequence[float],
                    encode: Callable[[str], list[int]], concat_id: int,
                    cond: Optional[ConditionalConfig] = None,
                    rng: Optional[np.random.Generator] = None) -> tuple[np.ndarray, np.ndarray]:
    """Token ids [L] int32 and per-token scores [L] float32 of one document.

    Each sentence is encoded on its own; the document starts with `concat_id`; with `cond`, each
    sentence gets its control token; every token (concat and control tokens included) carries the
    score of its sentence.
    """
    if len(texts) != len(scores):
        raise ValueError(f"PHF document: {len(texts)} texts but {len(scores)} scores")
    if cond is not None and rng is None:
        raise ValueError("document_tokens: conditional training needs a numpy Generator `rng`")
    ids: list[int] = []
    tok_scores: list[float] = []
    for i, (text, score) in enumerate(zip(texts, scores)):
        piece = [concat_id] if i == 0 else []
        if cond is not None:
            piece += control_token(float(score), cond, rng)
        piece += list(encode(text))
        ids += piece
        tok_scores += [float(score)] * len(piece)
    return np.asarray(ids, np.int32), np.asarray(tok_scores, np.float32)


def token_scores_from_sentences(sentence_ids: Sequence[Sequence[int]],
                                scores: Sequence[float]) -> np.ndarray:
    """Per-token scores [Σ len] float32: each token inherits its sentence's score (upstream)."""
    if len(sentence_ids) != len(scores):
        raise ValueError(f"{len(sentence_ids)} sentences but {len(scores)} scores")
    return np.concatenate([np.full(len(s), sc, np.float32) for s, sc in zip(sentence_ids, scores)]
                          or [np.zeros(0, np.float32)])


def constant_length_chunks(docs: Iterable[Mapping], encode: Callable[[str], list[int]],
                           concat_id: int, seq_length: int,
                           cond: Optional[ConditionalConfig] = None,
                           filter_threshold: Optional[float] = None,
                           seed: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """Stream of `{"tokens": [seq_length] int32, "token_scores": [seq_length] float32}` chunks.

    Documents (optionally filtered) are concatenated in order; the partial tail is dropped.
    """
    if seq_length < 2:
        raise ValueError(f"constant_length_chunks: seq_length must be >= 2, got {seq_length}")
    rng = np.random.default_rng(seed)
    if filter_threshold is not None:
        docs = filter_documents(docs, filter_threshold)
    buf_ids: list[np.ndarray] = []
    buf_scores: list[np.ndarray] = []
    n = 0
    for doc in docs:
        if "texts" not in doc or "scores" not in doc:
            raise KeyError(f"PHF document needs 'texts' and 'scores' (keys: {sorted(doc)})")
        ids, sc = document_tokens(doc["texts"], doc["scores"], encode, concat_id, cond, rng)
        buf_ids.append(ids)
        buf_scores.append(sc)
        n += ids.size
        if n >= seq_length:
            all_ids = np.concatenate(buf_ids)
            all_sc = np.concatenate(buf_scores)
            full = (all_ids.size // seq_length) * seq_length
            for s in range(0, full, seq_length):
                yield {"tokens": all_ids[s:s + seq_length], "token_scores": all_sc[s:s + seq_length]}
            buf_ids, buf_scores = [all_ids[full:]], [all_sc[full:]]
            n = buf_ids[0].size


def add_control_tokens(tokenizer) -> tuple[int, int]:
    """Add `<|aligned|>`, `<|misaligned|>` (in that order) to a fairjax `Tokenizer` as special
    tokens; returns their ids. Idempotent. Resize the LM afterwards (`resize_for_control_tokens`).
    """
    hf = tokenizer.hf
    vocab = hf.get_vocab()
    for token in CONTROL_TOKENS:
        if token not in vocab:
            extra = list(getattr(hf, "extra_special_tokens", None) or [])
            hf.add_special_tokens({"extra_special_tokens": extra + [token]})
            vocab = hf.get_vocab()
    return int(vocab[ALIGNED]), int(vocab[MISALIGNED])


def control_token_ids(tokenizer) -> list[int]:
    """Ids to block during generation (both control tokens)."""
    vocab = tokenizer.hf.get_vocab()
    return [int(vocab[t]) for t in CONTROL_TOKENS if t in vocab]


def resize_for_control_tokens(params: dict, config, new_vocab: int, seed: int = 0,
                              noise_std: float = 0.01) -> tuple[dict, object]:
    """Grow the LM's vocabulary arrays to `new_vocab`; new rows = mean row + noise_std·N(0, 1)
    (PHF `train.py`). Returns (params, config with the new vocab_size)."""
    old = int(config.vocab_size)
    out, new_config = resize_embeddings(params, config, new_vocab, method="mean")
    rng = np.random.default_rng(seed)
    for path, axis in _vocab_arrays(config):
        node = out
        for p in path[:-1]:
            node = node[p]
        arr = np.moveaxis(np.array(node[path[-1]], np.float32), axis, 0)
        arr[old:] += noise_std * rng.standard_normal(arr[old:].shape).astype(np.float32)
        node[path[-1]] = np.moveaxis(arr, 0, axis)
    return out, new_config
