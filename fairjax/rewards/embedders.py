"""Text embedders for candidate matching: `embed(texts: list[str]) -> np.ndarray [N, D]` float32,
rows L2-normalised (an all-zero row for a text with no features), so cosine = dot product.

* `HashingTfidfEmbedder` (numpy only, the fast default): word n-grams (and optional character
  n-grams of words) hashed with a stable 64-bit hash into `n_features` signed buckets
  (Weinberger et al. 2009 feature hashing: bucket from the low bits, sign from the top bit, so
  collisions cancel in expectation), sublinear tf `1 + log(count)` per hashed slot, times a smoothed
  idf `ln((1 + n) / (1 + df)) + 1` per bucket fitted on a corpus (the candidate pool) and saved
  with `save`/`load`. Dense output: `n_features` = 1024 keeps a 10k x 10k match a BLAS matmul.
* `BertClsEmbedder`: the FMs-at-work reward encoder, BERT [CLS] of `last_hidden_state` from a HF
  BERT directory, run by the Flax port in `fairjax.models.bert` (jax imported lazily here), batched,
  jit-compiled for a few fixed padded lengths, cached by text hash (memory + optional npz).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Optional, Protocol, Sequence, runtime_checkable

import numpy as np

_TOKEN = re.compile(r"\w[\w+#]*")  # word characters; keeps "c++" and "c#" whole
_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


@runtime_checkable
class Embedder(Protocol):
    """`id`: a string that changes whenever the vectors would (used as a cache key)."""

    id: str

    def embed(self, texts: Sequence[str]) -> np.ndarray:  # [N, D] float32, L2-normalised rows
        ...


def text_hash(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows of x [N, D] scaled to unit norm (zero rows stay zero), float32."""
    x = np.asarray(x, np.float32)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(n > 0, n, 1.0)


def _mix64(h: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on uint64 arrays (wrapping arithmetic)."""
    h = h.astype(np.uint64)
    with np.errstate(over="ignore"):
        h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


class HashingTfidfEmbedder:
    """Signed feature hashing + sublinear tf + per-bucket idf (see module docstring).

    n_features: D; word_ngrams: (lo, hi) word n-gram orders (default unigrams + bigrams);
    char_ngrams: None or (lo, hi) character n-grams inside each word (padded with spaces).
    Call `fit(corpus)` before `embed` (idf); an unfitted embedder uses idf = 1.
    """

    _memo: dict[str, int] = {}  # token -> 64-bit hash (process-wide, deterministic)
    _char_memo: dict[str, tuple[int, ...]] = {}  # token -> hashes of its character n-grams
    _MEMO_MAX = 2_000_000

    def __init__(self, n_features: int = 1024, word_ngrams: tuple[int, int] = (1, 2),
                 char_ngrams: Optional[tuple[int, int]] = None, sublinear_tf: bool = True,
                 chunk_size: int = 2048):
        if n_features < 2:
            raise ValueError(f"n_features must be >= 2, got {n_features}")
        lo, hi = word_ngrams
        if not 1 <= lo <= hi <= 2:
            raise ValueError(f"word_ngrams must be (1, 1), (1, 2) or (2, 2), got {word_ngrams}")
        if char_ngrams is not None and not 1 <= char_ngrams[0] <= char_ngrams[1]:
            raise ValueError(f"char_ngrams must be (lo, hi) with 1 <= lo <= hi, got {char_ngrams}")
        self.n_features = int(n_features)
        self.word_ngrams = (int(lo), int(hi))
        self.char_ngrams = None if char_ngrams is None else tuple(int(v) for v in char_ngrams)
        self.sublinear_tf = bool(sublinear_tf)
        self.chunk_size = int(chunk_size)
        self.idf: Optional[np.ndarray] = None  # [D] float32
        self.n_docs = 0

    # ------------------------------------------------------------------ identity / persistence
    def _settings(self) -> dict:
        return {"n_features": self.n_features, "word_ngrams": list(self.word_ngrams),
                "char_ngrams": None if self.char_ngrams is None else list(self.char_ngrams),
                "sublinear_tf": self.sublinear_tf}

    @property
    def id(self) -> str:
        idf = "none" if self.idf is None else hashlib.sha1(self.idf.tobytes()).hexdigest()[:12]
        s = self._settings()
        return (f"hashing-v1-d{s['n_features']}-w{self.word_ngrams[0]}{self.word_ngrams[1]}"
                f"-c{'' if self.char_ngrams is None else '%d%d' % self.char_ngrams}"
                f"-tf{'log' if self.sublinear_tf else 'raw'}-idf{idf}")

    def save(self, path: str | os.PathLike) -> None:
        """Settings + fitted idf to an .npz file."""
        np.savez(path, settings=json.dumps(self._settings()), n_docs=self.n_docs,
                 idf=self.idf if self.idf is not None else np.zeros(0, np.float32))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "HashingTfidfEmbedder":
        try:
            with np.load(path) as z:
                s = json.loads(str(z["settings"]))
                emb = cls(n_features=s["n_features"], word_ngrams=tuple(s["word_ngrams"]),
                          char_ngrams=None if s["char_ngrams"] is None else tuple(s["char_ngrams"]),
                          sublinear_tf=s["sublinear_tf"])
                idf = z["idf"]
                emb.n_docs = int(z["n_docs"])
        except (OSError, KeyError, ValueError) as e:
            raise ValueError(f"{path}: not a saved HashingTfidfEmbedder ({e})") from e
        if idf.size:
            if idf.shape != (emb.n_features,):
                raise ValueError(f"{path}: idf has shape {idf.shape}, expected ({emb.n_features},)")
            emb.idf = idf.astype(np.float32)
        return emb

    # ------------------------------------------------------------------ featurisation
    @staticmethod
    def _hash(s: str) -> int:
        return int.from_bytes(hashlib.blake2b(s.encode("utf-8", "surrogatepass"), digest_size=8).digest(),
                              "little")

    def _char_hashes(self, token: str) -> tuple[int, ...]:
        lo, hi = self.char_ngrams
        padded = f" {token} "
        return tuple(self._hash("\x00c" + padded[i:i + n])
                     for n in range(lo, hi + 1) for i in range(len(padded) - n + 1))

    def _slots(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Feature hashes of a batch, vectorised over all tokens of all texts.

        Returns (doc index [F] int64, mixed 64-bit feature hash [F] uint64).
        """
        memo, cmemo = self._memo, self._char_memo
        if len(memo) > self._MEMO_MAX:
            memo.clear()
            cmemo.clear()
        toks: list[str] = []
        lens = np.zeros(len(texts), np.int64)
        for i, t in enumerate(texts):
            words = _TOKEN.findall(t.lower())
            lens[i] = len(words)
            toks.extend(words)
        for tok in set(toks).difference(memo):
            memo[tok] = self._hash(tok)
        first = np.fromiter(map(memo.__getitem__, toks), np.uint64, len(toks))  # [n_tokens]
        doc = np.repeat(np.arange(len(texts), dtype=np.int64), lens)  # [n_tokens]
        hs, ds = [], []
        if self.word_ngrams[0] == 1:
            hs.append(first)
            ds.append(doc)
            if self.char_ngrams is not None:
                for tok in set(toks).difference(cmemo):
                    cmemo[tok] = self._char_hashes(tok)
                per = [cmemo[t] for t in toks]
                hs.append(np.fromiter((x for c in per for x in c), np.uint64))
                ds.append(np.repeat(doc, [len(c) for c in per]))
        if self.word_ngrams[1] == 2 and len(first) > 1:
            same = doc[1:] == doc[:-1]
            with np.errstate(over="ignore"):
                bi = _mix64(first[:-1] * np.uint64(0x9E3779B97F4A7C15)) ^ first[1:]
            hs.append(bi[same])
            ds.append(doc[1:][same])
        if not hs:
            return np.zeros(0, np.int64), np.zeros(0, np.uint64)
        return np.concatenate(ds), _mix64(np.concatenate(hs))

    def _tf(self, texts: Sequence[str]) -> np.ndarray:
        """Signed sublinear term frequencies [n, D] float32 (before idf), one chunk."""
        n, d = len(texts), self.n_features
        doc, h = self._slots(texts)
        bucket = (h % np.uint64(d)).astype(np.int64)
        sign = (h >> np.uint64(63)).astype(np.int64)  # 0 -> +1, 1 -> -1
        counts = np.bincount((doc * d + bucket) * 2 + sign, minlength=n * d * 2).reshape(n, d, 2)
        counts = counts.astype(np.float32)
        if self.sublinear_tf:
            counts = np.where(counts > 0, 1.0 + np.log(np.maximum(counts, 1.0)), 0.0).astype(np.float32)
        return counts[..., 0] - counts[..., 1]

    def fit(self, corpus: Sequence[str]) -> "HashingTfidfEmbedder":
        """Per-bucket document frequencies over `corpus` -> smoothed idf [D]."""
        self.fit_embed(corpus)
        return self

    def fit_embed(self, corpus: Sequence[str]) -> np.ndarray:
        """`fit(corpus)` then `embed(corpus)`, featurising once: -> [N, D] float32."""
        corpus = list(corpus)
        tf = np.zeros((len(corpus), self.n_features), np.float32)
        for s in range(0, len(corpus), self.chunk_size):
            tf[s:s + self.chunk_size] = self._tf(corpus[s:s + self.chunk_size])
        df = (tf != 0).sum(axis=0)
        self.n_docs = len(corpus)
        self.idf = (np.log((1.0 + self.n_docs) / (1.0 + df)) + 1.0).astype(np.float32)
        return l2_normalize(tf * self.idf)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """texts [N] -> [N, D] float32, L2-normalised rows."""
        texts = list(texts)
        out = np.zeros((len(texts), self.n_features), np.float32)
        for s in range(0, len(texts), self.chunk_size):
            tf = self._tf(texts[s:s + self.chunk_size])
            if self.idf is not None:
                tf *= self.idf
            out[s:s + len(tf)] = l2_normalize(tf)
        return out


class BertClsEmbedder:
    """BERT [CLS] (last_hidden_state[:, 0]) of each text, L2-normalised; cached by text hash.

    model_dir: HF BERT directory (config.json, model.safetensors, tokenizer.json).
    lengths: padded lengths that get a jit compilation each (capped at max_length); batches are
    padded to `batch_size` rows so each length compiles once. cache_path: optional .npz that is
    read at start and rewritten after each `embed` that computed new vectors.
    """

    def __init__(self, model_dir: str | os.PathLike, max_length: int = 512, batch_size: int = 32,
                 lengths: Sequence[int] = (32, 64, 128, 256, 512), dtype: str = "float32",
                 cache_path: Optional[str | os.PathLike] = None):
        import jax  # noqa: PLC0415  (lazy: the rest of fairjax.rewards is numpy-only)
        from tokenizers import Tokenizer  # noqa: PLC0415

        from fairjax.models import bert  # noqa: PLC0415

        model_dir = Path(model_dir)
        tok_file = model_dir / "tokenizer.json"
        if not tok_file.is_file():
            raise FileNotFoundError(f"{model_dir}: missing tokenizer.json (need a HF fast tokenizer)")
        self.model, self.params, self.config = bert.load_hf_dir(model_dir, dtype=dtype)
        self.max_length = min(int(max_length), self.config.max_positions)
        self.lengths = sorted({min(int(L), self.max_length) for L in lengths} | {self.max_length})
        self.batch_size = int(batch_size)
        self.tokenizer = Tokenizer.from_file(str(tok_file))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(self.max_length)
        self.pad_id = self.config.pad_token_id
        digest = hashlib.sha1((model_dir / "config.json").read_bytes())
        digest.update(str((model_dir / "model.safetensors").stat().st_size).encode())
        self.id = f"bert-cls-{digest.hexdigest()[:12]}-L{self.max_length}"
        model = self.model
        self._fwd = jax.jit(lambda p, ids, mask: model.apply({"params": p}, ids, mask).last_hidden_state[:, 0])
        self.cache: dict[str, np.ndarray] = {}
        self.cache_path = None if cache_path is None else Path(cache_path)
        if self.cache_path is not None and self.cache_path.is_file():
            with np.load(self.cache_path) as z:
                if str(z["embedder"]) == self.id:
                    self.cache = dict(zip(z["keys"].tolist(), z["vectors"]))

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Raw (unnormalised) [CLS] vectors [N, d] float32, no cache."""
        encs = self.tokenizer.encode_batch(list(texts))
        out = np.zeros((len(encs), self.config.hidden_size), np.float32)
        order = np.argsort([len(e.ids) for e in encs], kind="stable")
        for s in range(0, len(order), self.batch_size):
            rows = order[s:s + self.batch_size]
            longest = max(len(encs[r].ids) for r in rows)
            length = next(L for L in self.lengths if L >= longest)
            ids = np.full((self.batch_size, length), self.pad_id, np.int32)  # [B, T]
            mask = np.zeros((self.batch_size, length), np.int32)  # [B, T]
            for j, r in enumerate(rows):
                e = encs[r].ids
                ids[j, :len(e)] = e
                mask[j, :len(e)] = 1
            mask[len(rows):, 0] = 1  # padding rows: one visible token keeps softmax finite
            out[rows] = np.asarray(self._fwd(self.params, ids, mask))[: len(rows)]
        return out

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """texts [N] -> [N, d] float32, L2-normalised; computes only texts not in the cache."""
        keys = [text_hash(t) for t in texts]
        todo = {k: t for k, t in zip(keys, texts) if k not in self.cache}
        if todo:
            vecs = l2_normalize(self.encode(list(todo.values())))
            self.cache.update(zip(todo.keys(), vecs))
            if self.cache_path is not None:
                self.save_cache()
        if not keys:
            return np.zeros((0, self.config.hidden_size), np.float32)
        return np.stack([self.cache[k] for k in keys]).astype(np.float32)

    def save_cache(self) -> None:
        assert self.cache_path is not None
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.cache_path.with_name(self.cache_path.name + ".tmp.npz")
        keys = list(self.cache)
        np.savez(tmp, embedder=self.id, keys=np.array(keys),
                 vectors=np.stack([self.cache[k] for k in keys]))
        os.replace(tmp, self.cache_path)
