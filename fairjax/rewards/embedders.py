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
* `SentenceEncoder` / `load_embedder(name_or_dir)`: a sentence-transformers model (a preset of
  `fairjax.io.presets` or a directory) as sentence-transformers defines it (modules.json, pooling,
  Normalize, max_seq_length, lower-casing), its BERT or MPNet run by the Flax ports, the same
  bucketed, cached machinery; equal to `SentenceTransformer.encode`.
* `make_embedder(name)`: the one function every config field and CLI flag goes through (tfidf,
  a preset, a directory, bert-cls:DIR).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Optional, Protocol, Sequence, runtime_checkable

import numpy as np

from fairjax.io import presets

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


class _JaxEncoder:
    """Shared machinery of the Flax encoders: tokenise (no padding, truncation at max_length),
    sort by length, pad each batch to the smallest bucket length that fits and to `batch_size`
    rows (so each bucket compiles once), run a jitted `fwd(params, ids [B, T], mask [B, T]) ->
    [B, dim]`, and cache the L2-normalised vectors of `embed` by text hash (memory + optional npz,
    read at start and rewritten after each `embed` that computed new vectors)."""

    id: str
    dim: int

    def _setup(self, tokenizer, fwd, params, dim: int, pad_id: int, max_length: int,
               batch_size: int, lengths: Sequence[int], cache_path) -> None:
        self.tokenizer, self._fwd, self.params, self.dim = tokenizer, fwd, params, int(dim)
        self.pad_id, self.max_length, self.batch_size = int(pad_id), int(max_length), int(batch_size)
        self.lengths = sorted({min(int(L), self.max_length) for L in lengths} | {self.max_length})
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(self.max_length)
        self.cache: dict[str, np.ndarray] = {}
        self.cache_path = None if cache_path is None else Path(cache_path)
        if self.cache_path is not None and self.cache_path.is_file():
            with np.load(self.cache_path) as z:
                if str(z["embedder"]) == self.id:
                    self.cache = dict(zip(z["keys"].tolist(), z["vectors"]))

    def _run(self, texts: Sequence[str]) -> np.ndarray:
        """fwd over `texts` in length-sorted, bucket-padded batches: [N, dim] float32, no cache."""
        encs = self.tokenizer.encode_batch(list(texts))
        out = np.zeros((len(encs), self.dim), np.float32)
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

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return self._run(texts)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """texts [N] -> [N, dim] float32, L2-normalised; computes only texts not in the cache."""
        keys = [text_hash(t) for t in texts]
        todo = {k: t for k, t in zip(keys, texts) if k not in self.cache}
        if todo:
            vecs = l2_normalize(self.encode(list(todo.values())))
            self.cache.update(zip(todo.keys(), vecs))
            if self.cache_path is not None:
                self.save_cache()
        if not keys:
            return np.zeros((0, self.dim), np.float32)
        return np.stack([self.cache[k] for k in keys]).astype(np.float32)

    def save_cache(self) -> None:
        assert self.cache_path is not None
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.cache_path.with_name(self.cache_path.name + ".tmp.npz")
        keys = list(self.cache)
        np.savez(tmp, embedder=self.id, keys=np.array(keys),
                 vectors=np.stack([self.cache[k] for k in keys]))
        os.replace(tmp, self.cache_path)


class BertClsEmbedder(_JaxEncoder):
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

        from fairjax.models import bert  # noqa: PLC0415  (lazy: jax-free `import fairjax.rewards`)

        model_dir = Path(model_dir)
        tok_file = model_dir / "tokenizer.json"
        if not tok_file.is_file():
            raise FileNotFoundError(f"{model_dir}: missing tokenizer.json (need a HF fast tokenizer)")
        self.model, params, self.config = bert.load_hf_dir(model_dir, dtype=dtype)
        max_length = min(int(max_length), self.config.max_positions)
        digest = hashlib.sha1((model_dir / "config.json").read_bytes())
        digest.update(str((model_dir / "model.safetensors").stat().st_size).encode())
        self.id = f"bert-cls-{digest.hexdigest()[:12]}-L{max_length}"
        model = self.model
        fwd = jax.jit(lambda p, ids, mask: model.apply({"params": p}, ids, mask).last_hidden_state[:, 0])
        self._setup(Tokenizer.from_file(str(tok_file)), fwd, params, self.config.hidden_size,
                    self.config.pad_token_id, max_length, batch_size, lengths, cache_path)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Raw (unnormalised) [CLS] vectors [N, d] float32, no cache."""
        return self._run(texts)


# ----------------------------------------------------------------------------- sentence-transformers
POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
# 1_Pooling/config.json boolean keys (sentence-transformers < 6 and the published models), in the
# order sentence-transformers concatenates the enabled modes
_LEGACY_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean", "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean", "pooling_mode_lasttoken": "lasttoken",
}
ENCODER_PORTS = ("bert", "mpnet")  # config.json model_type of the Transformer module


def _read_json(path: Path) -> dict:
    try:
        out = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path}: missing (not a sentence-transformers model directory)") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON at line {e.lineno} ({e.msg})") from None
    if not isinstance(out, (dict, list)):
        raise ValueError(f"{path}: expected a JSON object")
    return out


def pooling_modes(pooling_cfg: dict, source: str = "1_Pooling/config.json") -> tuple[str, ...]:
    """The pooling modes of a sentence-transformers Pooling config, in concatenation order:
    `pooling_mode` (a name or a list) or the legacy `pooling_mode_*` booleans (none set = mean)."""
    if "pooling_mode" in pooling_cfg:
        raw = pooling_cfg["pooling_mode"]
        modes = (raw,) if isinstance(raw, str) else tuple(raw)
    else:
        modes = tuple(m for k, m in _LEGACY_POOLING_KEYS.items() if pooling_cfg.get(k, False)) or ("mean",)
    bad = [m for m in modes if m not in POOLING_MODES]
    if bad or not modes:
        raise ValueError(f"{source}: pooling mode {bad or modes} not in {list(POOLING_MODES)}")
    return modes


def pool(hidden, mask, modes: Sequence[str]):
    """sentence-transformers pooling (jax): hidden [B, T, d] float32, mask [B, T] (right-padded)
    -> [B, len(modes) * d], the modes concatenated in the given order."""
    import jax.numpy as jnp  # noqa: PLC0415

    m = mask.astype(hidden.dtype)[..., None]  # [B, T, 1]
    t = hidden.shape[1]
    total = (hidden * m).sum(axis=1)  # [B, d]
    count = jnp.maximum(m.sum(axis=1), 1e-9)  # [B, 1]
    first = jnp.argmax(mask, axis=1)  # [B]: first real token (0 when right-padded)
    out = []
    for mode in modes:
        if mode == "cls":
            out.append(jnp.take_along_axis(hidden, first[:, None, None], axis=1)[:, 0])
        elif mode == "max":
            out.append(jnp.where(m > 0, hidden, -jnp.inf).max(axis=1))
        elif mode == "mean":
            out.append(total / count)
        elif mode == "mean_sqrt_len_tokens":
            out.append(total / jnp.sqrt(count))
        elif mode == "weightedmean":  # weights 1, 2, ... from the first real token
            w = m * (jnp.arange(1, t + 1, dtype=hidden.dtype)[None, :, None] - first[:, None, None])
            out.append((hidden * w).sum(axis=1) / jnp.maximum(w.sum(axis=1), 1e-9))
        else:  # lasttoken
            last = t - 1 - jnp.argmax(mask[:, ::-1], axis=1)  # [B]
            out.append(jnp.take_along_axis(hidden * m, last[:, None, None], axis=1)[:, 0])
    return jnp.concatenate(out, axis=-1)


def _file_digest(paths: Sequence[Path]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for p in paths:
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()


class SentenceEncoder(_JaxEncoder):
    """A sentence-transformers model directory run by fairjax's Flax ports (see `load_embedder`).

    Reads `modules.json` (Transformer -> Pooling [-> Normalize]; any other module is refused),
    `1_Pooling/config.json`, `sentence_bert_config.json` (`max_seq_length`, `do_lower_case`) and
    the Transformer's `config.json` (model_type bert -> fairjax.models.bert, mpnet ->
    fairjax.models.mpnet), the tokenizer with transformers' fast tokenizer (local files only).
    `encode(texts, normalize_embeddings)` equals `SentenceTransformer(dir).encode(texts,
    normalize_embeddings=...)`; `embed(texts)` is the L2-normalised, cached Embedder interface.
    """

    def __init__(self, model_dir: str | os.PathLike, batch_size: int = 32,
                 lengths: Sequence[int] = (32, 64, 128, 256, 384, 512), dtype: str = "float32",
                 cache_path: Optional[str | os.PathLike] = None, name: Optional[str] = None):
        import jax  # noqa: PLC0415

        root = Path(model_dir)
        self.model_dir = root
        mods = _read_json(root / "modules.json")
        if not isinstance(mods, list) or not all(isinstance(m, dict) and "type" in m for m in mods):
            raise ValueError(f"{root / 'modules.json'}: expected a list of {{idx, name, path, type}}")
        kinds = [str(m["type"]).rsplit(".", 1)[-1] for m in mods]
        if not kinds or kinds[0] != "Transformer" or kinds[1:2] != ["Pooling"] or any(
                k != "Normalize" for k in kinds[2:]):
            raise ValueError(f"{root / 'modules.json'}: modules {kinds}; fairjax runs Transformer -> "
                             "Pooling [-> Normalize] (other sentence-transformers modules are not ported)")
        tdir = root / (mods[0].get("path") or "")
        pool_file = root / (mods[1].get("path") or "1_Pooling") / "config.json"
        self.modes = pooling_modes(_read_json(pool_file), str(pool_file))
        self.normalize = len(kinds) > 2
        st_cfg = _read_json(tdir / "sentence_bert_config.json") if (
            tdir / "sentence_bert_config.json").is_file() else {}
        self.do_lower_case = bool(st_cfg.get("do_lower_case", False))
        hf_cfg = _read_json(tdir / "config.json")
        self.model_type = hf_cfg.get("model_type")
        if self.model_type not in ENCODER_PORTS:
            raise ValueError(f"{tdir / 'config.json'}: model_type={self.model_type!r}; fairjax ports "
                             f"{list(ENCODER_PORTS)}")
        from fairjax.models import bert, mpnet  # noqa: PLC0415  (lazy: jax-free `import fairjax.rewards`)
        port = bert if self.model_type == "bert" else mpnet
        self.model, params, self.config = port.load_hf_dir(tdir, dtype=dtype)
        limit = getattr(self.config, "max_length", self.config.max_positions)
        tokenizer = self._tokenizer(tdir)
        max_len = st_cfg.get("max_seq_length") or tokenizer.model_max_length
        max_length = min(int(max_len), limit)
        dim = len(self.modes) * self.config.hidden_size
        for key in ("word_embedding_dimension", "embedding_dimension"):
            want = _read_json(pool_file).get(key)
            if want is not None and int(want) != self.config.hidden_size:
                raise ValueError(f"{pool_file}: {key}={want} but {tdir / 'config.json'} has "
                                 f"hidden_size={self.config.hidden_size}")
        backend = tokenizer.backend_tokenizer
        if self.do_lower_case:
            from tokenizers.normalizers import Lowercase  # noqa: PLC0415
            from tokenizers.normalizers import Sequence as NormSeq  # noqa: PLC0415

            norm = backend.normalizer
            has = isinstance(norm, Lowercase) or (isinstance(norm, NormSeq)
                                                  and any(isinstance(n, Lowercase) for n in norm))
            if not has:
                backend.normalizer = NormSeq([Lowercase()] + (list(norm) if isinstance(norm, NormSeq)
                                                               else [norm] if norm is not None else []))
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.config.pad_token_id
        files = [tdir / "config.json", tdir / "model.safetensors", pool_file, root / "modules.json"]
        files += [p for p in (tdir / "tokenizer.json", tdir / "sentence_bert_config.json") if p.is_file()]
        label = name or "st"
        self.id = (f"{label}-{self.model_type}-{_file_digest(files)[:12]}-{'+'.join(self.modes)}"
                   f"-n{int(self.normalize)}-L{max_length}-lc{int(self.do_lower_case)}")
        model, modes = self.model, self.modes
        fwd = jax.jit(lambda p, ids, mask: pool(model.apply({"params": p}, ids, mask).last_hidden_state,
                                                mask, modes))
        self._setup(backend, fwd, params, dim, pad_id, max_length, batch_size, lengths, cache_path)

    @staticmethod
    def _tokenizer(tdir: Path):
        from transformers import AutoTokenizer  # noqa: PLC0415

        try:
            tok = AutoTokenizer.from_pretrained(str(tdir), local_files_only=True)
        except (OSError, ValueError) as e:
            raise ValueError(f"{tdir}: no usable tokenizer ({e})") from None
        if not getattr(tok, "is_fast", False):
            raise ValueError(f"{tdir}: {type(tok).__name__} is not a fast tokenizer (need tokenizer.json)")
        return tok

    def encode(self, texts: Sequence[str], normalize_embeddings: bool = False) -> np.ndarray:
        """sentence-transformers' `encode`: pooled vectors [N, dim] float32 (Normalize module
        applied when the model has one, L2 again when normalize_embeddings), no cache."""
        out = self._run(texts)
        if self.normalize or normalize_embeddings:
            out = out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out.astype(np.float32)


# ----------------------------------------------------------------------------- choosing an embedder
TFIDF_NAMES = ("tfidf", "hashing")
BERT_CLS_PREFIX = "bert-cls:"
_LOADED: dict[tuple, Embedder] = {}


def load_embedder(name_or_dir: str | os.PathLike, **kwargs) -> SentenceEncoder:
    """A sentence encoder from a preset name (`all-minilm-l6-v2`, `all-mpnet-base-v2`:
    fairjax.io.presets, verified and extracted once) or a sentence-transformers directory.
    kwargs go to SentenceEncoder (batch_size, lengths, dtype, cache_path)."""
    name = str(name_or_dir)
    if presets.is_preset(name):
        return SentenceEncoder(presets.sentence_transformers_dir(name), name=name, **kwargs)
    path = Path(name).expanduser()
    if not path.is_dir():
        known = presets.names("sentence-transformers")
        raise ValueError(f"embedder {name!r}: not a preset ({known}) and not a directory")
    return SentenceEncoder(path, **kwargs)


def embedder_choices() -> list[str]:
    return ["tfidf", *presets.names("sentence-transformers"), BERT_CLS_PREFIX + "DIR",
            "a sentence-transformers directory"]


def config_embedder(name: Optional[str]) -> str:
    """An embedder name as a config block gives it (`reward.embedder`, `scorer.embedder`):
    stripped; empty or absent means tfidf, what configs written before the key were scored with."""
    return str(name or "").strip() or "tfidf"


def make_embedder(name: str, n_features: int = 4096) -> Embedder:
    """The embedder named by a config (`reward.embedder`, `scorer.embedder`, `--embedder`):
    `tfidf` (alias `hashing`): HashingTfidfEmbedder(n_features); `bert-cls:DIR`: BertClsEmbedder
    on a HF BERT directory; a preset name or a sentence-transformers directory: load_embedder.
    Jax encoders are loaded once per process (same name -> the same object, its cache shared)."""
    name = str(name or "").strip()
    if not name:
        raise ValueError(f"embedder name is empty; choose one of {embedder_choices()}")
    if name in TFIDF_NAMES:
        return HashingTfidfEmbedder(n_features=int(n_features))
    key = (name,)
    if key not in _LOADED:
        if name.startswith(BERT_CLS_PREFIX):
            _LOADED[key] = BertClsEmbedder(name[len(BERT_CLS_PREFIX):])
        else:
            _LOADED[key] = load_embedder(name)
    return _LOADED[key]
