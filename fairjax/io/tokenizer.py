"""Tokenizer wrapper with the ILQL token layout (no jax at import time).

`Tokenizer.from_dir(path)` wraps a Hugging Face fast tokenizer loaded from a *local* directory
and makes sure the six layout tokens exist, in upstream order:

    </a>  <a>  </eod>  <s>  </s>  <|pad|>
    eoa   boa  eod     bos  eos   pad        (attribute names: eoa_id, boa_id, ...)

Tokens that are absent are appended after the base vocabulary in that order (transformers 5.x
would otherwise put bos/sep/pad first; the fixture table and FMs-at-work with transformers 4.x
use this order). `eos_id` is the ILQL end-of-STATE token `</s>`, not Hugging Face's `eos_token`. (A tokenizer that
already has `<s>`/`</s>`, e.g. Llama-2's, keeps its ids: there `</s>` is both HF eos and ILQL eos.)

Literal control strings in user text. Upstream FMs-at-work tokenised postings with special-token
parsing on, so a posting containing `</a>` or `<s>` produced control ids (its data pipeline stripped
anchors to avoid that). fairjax instead encodes all user text with special-token parsing **off**
(`tokenizers`' `encode_special_tokens=True`): `"</a>"` in a posting becomes the ordinary byte-level
pieces `<`, `/`, `a`, `>` and decodes back to the same text. This holds for every special token of
the tokenizer (also `<|endoftext|>` and chat-template markers). Control tokens enter a sequence only
as ids inserted by the layout code (`fairjax/data/layout.py`).

Chat templates (instruct models). A tokenizer whose HF `chat_template` is set renders prompts with
it by default (`use_chat_template=None` = auto; False turns it off): `chat_prompt_parts` gives the
ids of the rendered system turn (`system_text`, default `DEFAULT_SYSTEM_TEXT`), the user turn
holding the prompt, and the assistant header, split as (head, body = the prompt's own ids, tail)
so that truncation trims only the prompt. `end_of_turn_id` is the token the template closes an
assistant turn with (e.g. ChatML `<|im_end|>`), a stop token for decoding; None without a template.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional, Protocol, Sequence, TypeVar

import numpy as np

# The system turn of a templated job prompt (docs/data-and-rewards.md).
DEFAULT_SYSTEM_TEXT = "You rewrite job postings with inclusive wording and keep every fact."
# placeholders substituted into a rendered template (private-use code points: never in real text)
_SLOTS = {"system": "\uE000FAIRJAX_SYSTEM\uE000", "user": "\uE000FAIRJAX_USER\uE000",
          "assistant": "\uE000FAIRJAX_ASSISTANT\uE000"}

LAYOUT_TOKENS: tuple[str, ...] = ("</a>", "<a>", "</eod>", "<s>", "</s>", "<|pad|>")
# attribute name for each layout token, same order
LAYOUT_ROLES: tuple[str, ...] = ("eoa_id", "boa_id", "eod_id", "bos_id", "eos_id", "pad_id")


class VocabMismatchError(ValueError):
    """The model's vocabulary size differs from the tokenizer's length."""


def _load_hf_tokenizer(path: str | os.PathLike):
    from transformers import AutoTokenizer  # heavy import: only when a tokenizer is built

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"tokenizer directory {path} does not exist")
    try:
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as e:  # transformers raises many types; re-raise with the path
        raise ValueError(f"could not load a Hugging Face tokenizer from {path}: {e}") from e
    if getattr(tok, "_tokenizer", None) is None:
        raise ValueError(f"{path}: fairjax needs a fast (`tokenizers`-backed) tokenizer, "
                         f"got {type(tok).__name__}; add a tokenizer.json to the directory")
    return tok


def _add_layout_tokens(tok) -> list[str]:
    """Add the absent layout tokens in upstream order; returns the tokens that were added.

    Each token is added with its own call so ids come out in LAYOUT_TOKENS order; `<s>`, `</s>`
    and `<|pad|>` also become the HF `bos_token`, `sep_token`, `pad_token` as upstream (only when
    they were added here, so an existing tokenizer's roles are not rewritten).
    """
    vocab = tok.get_vocab()
    added = []
    for token in LAYOUT_TOKENS:
        if token in vocab:
            continue
        if token == "<s>":
            tok.add_special_tokens({"bos_token": token})
        elif token == "</s>":
            tok.add_special_tokens({"sep_token": token})
        elif token == "<|pad|>":
            tok.add_special_tokens({"pad_token": token})
        else:
            extra = getattr(tok, "extra_special_tokens", None) or []
            if isinstance(extra, (list, tuple)):
                tok.add_special_tokens({"extra_special_tokens": list(extra) + [token]})
            else:  # named extras (a dict) cannot be extended by list: add as a special token
                from tokenizers import AddedToken

                tok.add_tokens([AddedToken(token, special=True, normalized=False)],
                               special_tokens=True)
        added.append(token)
    return added


class Tokenizer:
    """A fast HF tokenizer + the ILQL layout token ids.

    Attributes: `eoa_id boa_id eod_id bos_id eos_id pad_id` (ints), `hf` (the wrapped HF
    tokenizer), `use_chat_template` (bool; None at construction = True iff the tokenizer has a
    chat template), `system_text` (the system turn of templated prompts), `end_of_turn_id` (int
    or None), `added_tokens` (layout tokens this wrapper added).
    """

    def __init__(self, hf_tokenizer, use_chat_template: Optional[bool] = None,
                 source: str = "<memory>", system_text: str = DEFAULT_SYSTEM_TEXT):
        from tokenizers import Tokenizer as _Backend

        self.hf = hf_tokenizer
        self.source = source
        self.added_tokens = _add_layout_tokens(hf_tokenizer)
        vocab = hf_tokenizer.get_vocab()
        for token, role in zip(LAYOUT_TOKENS, LAYOUT_ROLES):
            setattr(self, role, int(vocab[token]))
        # A private copy of the backend that never parses special tokens: user text stays text.
        self._text_backend = _Backend.from_str(hf_tokenizer._tokenizer.to_str())
        self._text_backend.encode_special_tokens = True
        self._text_backend.no_truncation()
        self._text_backend.no_padding()
        if use_chat_template and not getattr(hf_tokenizer, "chat_template", None):
            raise ValueError(f"{source}: chat_template=True but the tokenizer has no chat template "
                             "(tokenizer_config.json / chat_template.jinja)")
        if use_chat_template is None:
            use_chat_template = bool(getattr(hf_tokenizer, "chat_template", None))
        self.use_chat_template = bool(use_chat_template)
        self.system_text = system_text
        self.end_of_turn_id: Optional[int] = (self._find_end_of_turn() if self.use_chat_template
                                              else None)

    # -- construction / persistence -------------------------------------------------------
    @classmethod
    def from_dir(cls, path: str | os.PathLike, chat_template: Optional[bool] = None) -> "Tokenizer":
        """Load from a local directory (HF snapshot, `hf/` fixture, fairjax `tokenizer/`);
        `chat_template` None: use the template when the tokenizer has one."""
        return cls(_load_hf_tokenizer(path), use_chat_template=chat_template, source=str(path))

    def save(self, path: str | os.PathLike) -> None:
        """Write HF tokenizer files (tokenizer.json, tokenizer_config.json, ...) to `path`."""
        Path(path).mkdir(parents=True, exist_ok=True)
        self.hf.save_pretrained(str(path))

    # -- sizes and ids -------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.hf)

    @property
    def special_ids(self) -> dict[str, int]:
        """{layout token: id} for the six layout tokens."""
        return {t: getattr(self, r) for t, r in zip(LAYOUT_TOKENS, LAYOUT_ROLES)}

    def encode_text(self, text: str) -> list[int]:
        """Ids of user text with special-token parsing OFF (see module docstring); no bos/eos."""
        if not isinstance(text, str):
            raise TypeError(f"encode_text expects str, got {type(text).__name__}")
        return list(self._text_backend.encode(text, add_special_tokens=False).ids)

    def encode_texts(self, texts: Sequence[str]) -> list[list[int]]:
        """Batch version of `encode_text` (uses the Rust batch encoder)."""
        encs = self._text_backend.encode_batch(list(texts), add_special_tokens=False)
        return [list(e.ids) for e in encs]

    def decode(self, ids: Sequence[int] | np.ndarray, skip_special_tokens: bool = True) -> str:
        """Text of `ids` ([T] ints). Special tokens are dropped when `skip_special_tokens`."""
        ids = [int(i) for i in np.asarray(ids).reshape(-1)]
        return self.hf.decode(ids, skip_special_tokens=skip_special_tokens,
                              clean_up_tokenization_spaces=False)

    def token_to_id(self, token: str) -> int:
        vocab = self.hf.get_vocab()
        if token not in vocab:
            raise KeyError(f"token {token!r} is not in the vocabulary of {self.source}")
        return int(vocab[token])

    # -- chat templates (FMs-at-work's Llama-3 instruct variant) ---------------------------
    def apply_chat_template(self, prompt: str, system: Optional[str] = None) -> list[int]:
        """Ids of `prompt` wrapped in the tokenizer's chat template, ready for generation.

        The template's own markers (e.g. `<|start_header_id|>`) are parsed as control tokens,
        while `prompt` and `system` are encoded with `encode_text` (literal markers stay text).
        Without `use_chat_template` this is just `encode_text(prompt)` (system must be None).
        """
        if not self.use_chat_template:
            if system is not None:
                raise ValueError("system prompt given but the tokenizer is not configured with "
                                 "chat_template=True")
            return self.encode_text(prompt)
        messages = ([{"role": "system", "content": _SLOTS["system"]}] if system is not None else [])
        messages.append({"role": "user", "content": _SLOTS["user"]})
        rendered = self.hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self._encode_template(rendered, {_SLOTS["system"]: system, _SLOTS["user"]: prompt})

    def _encode_template(self, rendered: str, values: dict[str, str]) -> list[int]:
        """Ids of a rendered template: its added tokens (template markers) as control ids, the
        `values` substituted for their slots and encoded as text with the template text around
        them (a text run may join template text and content, so BPE merges across the boundary
        are as in a single-pass encoding, but control strings inside content stay text)."""
        added = {t.content: i for i, t in self.hf._tokenizer.get_added_tokens_decoder().items()}
        pattern = "|".join(re.escape(s) for s in
                           sorted(list(values) + list(added), key=len, reverse=True))
        ids: list[int] = []
        run: list[str] = []
        for piece in re.split(f"({pattern})", rendered):
            if piece in added:
                ids += self.encode_text("".join(run)) if run else []
                run = []
                ids.append(int(added[piece]))
            else:
                run.append(values.get(piece, piece))
        if run:
            ids += self.encode_text("".join(run))
        return ids

    def _render(self, messages: list[dict], add_generation_prompt: bool) -> str:
        try:
            return self.hf.apply_chat_template(messages, tokenize=False,
                                               add_generation_prompt=add_generation_prompt)
        except Exception as e:  # jinja errors (e.g. a template that refuses a system role)
            raise ValueError(f"{self.source}: its chat template failed to render "
                             f"{[m['role'] for m in messages]}: {e}") from e

    def _system_and_user(self, system: str) -> list[dict]:
        """[system, user] messages with slots; a template that refuses the system role gets the
        system text at the start of the user turn instead."""
        both = [{"role": "system", "content": _SLOTS["system"]},
                {"role": "user", "content": _SLOTS["user"]}]
        try:
            self._render(both, True)
            return both
        except ValueError:
            return [{"role": "user", "content": _SLOTS["system"] + "\n\n" + _SLOTS["user"]}]

    def chat_prompt_parts(self, prompt: str, system: Optional[str] = None
                          ) -> tuple[list[int], list[int], list[int]]:
        """A job prompt in the chat template as (head, body, tail) ids: head = the rendering up
        to the user content (system turn with `system`, default `system_text`, and the user
        header), body = `encode_text(prompt)`, tail = the rest (end of the user turn and the
        assistant header of the generation prompt). head + body + tail is the templated prompt;
        truncation trims the body only. Needs `use_chat_template`."""
        if not self.use_chat_template:
            raise ValueError(f"{self.source}: chat_prompt_parts needs a tokenizer with "
                             "use_chat_template=True")
        system = self.system_text if system is None else system
        rendered = self._render(self._system_and_user(system), True)
        if rendered.count(_SLOTS["user"]) != 1:
            raise ValueError(f"{self.source}: the chat template renders the user turn "
                             f"{rendered.count(_SLOTS['user'])} times; expected once")
        before, after = rendered.split(_SLOTS["user"])
        values = {_SLOTS["system"]: system}
        return (self._encode_template(before, values), self.encode_text(prompt),
                self._encode_template(after, values))

    def _find_end_of_turn(self) -> Optional[int]:
        """The first added token the template writes after an assistant turn's content (ChatML
        `<|im_end|>`, Llama-3 `<|eot_id|>`), or None when it writes none."""
        msgs = [{"role": "user", "content": _SLOTS["user"]},
                {"role": "assistant", "content": _SLOTS["assistant"]}]
        rendered = self._render(msgs, False)
        if _SLOTS["assistant"] not in rendered:
            return None
        rest = rendered.split(_SLOTS["assistant"], 1)[1]
        added = {t.content: i for i, t in self.hf._tokenizer.get_added_tokens_decoder().items()}
        hits = [(rest.find(t), i) for t, i in added.items() if t and t in rest]
        return int(min(hits)[1]) if hits else None

    def __repr__(self) -> str:
        return (f"Tokenizer({self.source!r}, len={len(self)}, layout={self.special_ids}, "
                f"chat_template={self.use_chat_template})")


# -- model <-> tokenizer consistency ------------------------------------------------------
class VocabConfig(Protocol):
    """What this module reads of a model config (`fairjax.models.gpt2.GPT2Config`,
    `fairjax.models.llama.LlamaConfig`, ...): its family `kind` ("gpt2" | "llama") and
    `vocab_size`; `tie_word_embeddings` is read when present (default: tied for gpt2).
    `resize_embeddings` also needs a dataclass (it returns `dataclasses.replace(config, ...)`)."""

    @property
    def kind(self) -> str: ...

    @property
    def vocab_size(self) -> int: ...


C = TypeVar("C", bound=VocabConfig)


def assert_vocab_matches(tokenizer: Tokenizer, config: VocabConfig,
                         allow_padding: bool = False) -> None:
    """Raise `VocabMismatchError` unless `config.vocab_size == len(tokenizer)`.

    allow_padding: accept a model vocabulary larger than the tokenizer (rows padded for speed).
    """
    n_model, n_tok = int(config.vocab_size), len(tokenizer)
    if n_model == n_tok or (allow_padding and n_model > n_tok):
        return
    hint = ("use fairjax.io.tokenizer.resize_embeddings(params, config, len(tokenizer), rng) "
            "to add rows for the layout tokens" if n_model < n_tok else
            "the tokenizer lacks tokens the model was trained with: use the model's own tokenizer")
    raise VocabMismatchError(
        f"model vocab_size={n_model} but tokenizer {tokenizer.source} has {n_tok} tokens "
        f"(layout ids {tokenizer.special_ids}); {hint}")


# param paths of the vocabulary-sized arrays per model kind: (path, vocab axis); an untied
# model also has its head `lm_head/kernel` [d, V] (axis 1), a tied one reads the embedding.
_EMBEDDINGS = {"gpt2": ("wte", "embedding"), "llama": ("embed_tokens", "embedding")}
_HEAD = (("lm_head", "kernel"), 1)


def _vocab_arrays(config: VocabConfig) -> list:
    kind = getattr(config, "kind", None)
    if kind not in _EMBEDDINGS:
        raise ValueError(f"resize_embeddings: unsupported model kind {kind!r}")
    tied = bool(getattr(config, "tie_word_embeddings", kind == "gpt2"))
    return [(_EMBEDDINGS[kind], 0)] + ([] if tied else [_HEAD])


def resize_embeddings(params: dict, config: C, new_vocab: int, rng=None,
                      method: str = "mean") -> tuple[dict, C]:
    """Grow the vocabulary-sized params to `new_vocab` rows; returns (params, new_config).

    New rows (ids `config.vocab_size .. new_vocab-1`, e.g. the six layout tokens) are
      method="mean":   the mean of the existing rows (deterministic; like HF's `mean_resizing`
                       without its tiny covariance noise) — the default, keeps initial logits sane;
      method="normal": N(0, 0.02) (HF's `initializer_range` init); needs a jax PRNG key `rng`.
    Existing rows are unchanged. A tied head (`tie_word_embeddings`: GPT-2, SmolLM2) follows the
    embedding, so only the embedding grows and the tie is kept; an untied `lm_head/kernel`
    ([d, V]) gets columns the same way. Shrinking is refused (it would drop trained tokens).
    """
    import dataclasses

    arrays = _vocab_arrays(config)
    old = int(config.vocab_size)
    if new_vocab < old:
        raise ValueError(f"resize_embeddings: refusing to shrink vocab {old} -> {new_vocab}")
    if method not in ("mean", "normal"):
        raise ValueError(f"resize_embeddings: method must be 'mean' or 'normal', got {method!r}")
    if method == "normal" and rng is None:
        raise ValueError("resize_embeddings(method='normal') needs a jax PRNG key `rng`")
    out = _copy_tree(params)
    n_new = new_vocab - old
    for i, (path, axis) in enumerate(arrays):
        node = out
        for p in path[:-1]:
            if p not in node:
                raise KeyError(f"resize_embeddings: params have no {'/'.join(path)}")
            node = node[p]
        arr = np.asarray(node[path[-1]], dtype=np.float32)
        if arr.shape[axis] != old:
            raise ValueError(f"resize_embeddings: {'/'.join(path)} has shape {arr.shape}, expected "
                             f"{old} along axis {axis} (config.vocab_size)")
        if n_new == 0:
            continue
        rows = np.moveaxis(arr, axis, 0)  # [V, d]
        if method == "mean":
            extra = np.repeat(rows.mean(axis=0, keepdims=True), n_new, axis=0)
        else:
            import jax

            key = jax.random.fold_in(rng, i)
            extra = 0.02 * np.asarray(jax.random.normal(key, (n_new,) + rows.shape[1:]), np.float32)
        node[path[-1]] = np.moveaxis(np.concatenate([rows, extra], axis=0), 0, axis)
    return out, dataclasses.replace(config, vocab_size=int(new_vocab))


def _copy_tree(tree):
    """Shallow-copy nested dicts (leaves shared) so callers' params are not mutated."""
    if isinstance(tree, dict) or hasattr(tree, "items"):
        return {k: _copy_tree(v) for k, v in tree.items()}
    return tree
