"""Baseline rewriting systems, beside the trained policies in `fairjax.evaluate` and `fairjax.rewrite`.

Every system here has `name` and `rewrite_rows(originals, prompts, metadata, rng) -> [row]`, one
row per posting with the keys a sampled policy row has (`text`, `finished`, `log_prob`, `kl`,
`adv_sum`, `num_new_tokens`, `prompt_truncated`; None where a system has no such number), and
`rewrite(texts) -> texts` (the `rewriters.TextRewriter` protocol).

* `TextSystem` wraps a deterministic text baseline (`rewriters.LexiconSwap` "lexicon_swap",
  `rewriters.InclusionStatement` "inclusion_statement").
* `PromptedRewriter` ("prompted"): an instruct model zero-shot. The prompt is `instruction`
  (default `INSTRUCTION`), a blank line and the posting, wrapped in the tokenizer's chat template
  when it has one (else followed by "\\n\\nRewritten posting:\\n"); decoding stops at the
  template's end-of-turn token (else the tokenizer's eos). Sampling settings: `PROMPTED_SAMPLING`
  (temperature 0.7, top-p 0.9), `max_new_tokens` 0 = the 95th percentile of the postings' token
  lengths under its tokenizer + 16, capped at half the context. The posting is cut from its end
  when the prompt would not fit (`prompt_truncated`).
* `BestOfN` ("best_of_n"): n samples per prompt from a policy, each scored with a reward (the
  policy's training reward where it has one) and tested for faithfulness
  (`eval.preservation.faithful_mask`: cosine under an embedder ≥ τ and the header fields kept);
  the sample with the highest reward among the faithful ones is returned
  (`eval.preservation.best_faithful`). When no sample is faithful, the one most similar to the
  original is returned and the row says `faithful: False`. Rows add `n_faithful`,
  `faithful` and `candidate_reward` (the chosen sample's reward under that reward).
"""
from __future__ import annotations

import copy
import dataclasses
import os
from typing import Any, Callable, Optional, Sequence

import numpy as np

from fairjax.data.jobs import build_prompt, extract_fields
from fairjax.data.layout import prompt_tokens
from fairjax.eval.preservation import (
    Faithfulness,  # noqa: F401  (re-exported: the test best_of_n uses)
    best_faithful,
)
from fairjax.generate import GenerationConfig, Policy, generate_texts
from fairjax.io.presets import PRESETS
from fairjax.rewriters import TEXT_BASELINES
from fairjax.runs import load

INSTRUCTION = ("Rewrite the job posting below in gender-neutral, inclusive language. Keep the "
               "company name, job title, location, remote policy, technologies, requirements and "
               "contact details exactly as they are and change nothing else. Reply with the "
               "rewritten posting only.")
PROMPTED_MODEL = "smollm2-135m-instruct"  # the default instruct model of `prompted`
PROMPTED_SAMPLING = {"mode": "sample", "temperature": 0.7, "top_p": 0.9, "top_k": 0}
NO_POLICY_FIELDS = {"finished": True, "log_prob": None, "kl": None, "adv_sum": None,
                    "num_new_tokens": None, "prompt_truncated": False}


class TextSystem:
    """A `TextRewriter` as a system: rewrites the original postings; no model, always finished."""

    def __init__(self, rewriter: Any):
        self.rewriter, self.name = rewriter, rewriter.name

    def rewrite(self, texts: Sequence[str]) -> list[str]:
        return self.rewriter.rewrite(texts)

    def rewrite_rows(self, originals: Sequence[str], prompts=None, metadata=None, rng=None) -> list[dict]:
        return [{"text": t, **NO_POLICY_FIELDS} for t in self.rewriter.rewrite(list(originals))]


def text_baseline(name: str) -> TextSystem:
    """"lexicon_swap" | "inclusion_statement" as a `TextSystem` (ValueError for another name)."""
    if name not in TEXT_BASELINES:
        raise ValueError(f"{name!r} is not a text baseline; expected one of {sorted(TEXT_BASELINES)}")
    return TextSystem(TEXT_BASELINES[name]())


def _sample_rows(gens: Sequence[dict], truncated: Sequence[bool]) -> list[dict]:
    keys = ("text", "finished", "log_prob", "kl", "adv_sum", "num_new_tokens")
    return [{**{k: g[k] for k in keys}, "prompt_truncated": bool(c)} for g, c in zip(gens, truncated)]


class PromptedRewriter:
    """An instruct LM rewriting zero-shot (module docstring). `generation`: a GenerationConfig
    whose max_new_tokens is used as is (`size` sets it from postings)."""

    name = "prompted"

    def __init__(self, module: Any, params: Any, tokenizer: Any, generation: Any,
                 instruction: str = INSTRUCTION, batch_size: int = 8, seed: int = 0,
                 name: str = "prompted", auto_size: bool = False):
        if getattr(tokenizer.hf, "chat_template", None) and not tokenizer.use_chat_template:
            tokenizer = copy.copy(tokenizer)
            tokenizer.use_chat_template = True
        self.policy, self.tokenizer, self.generation = Policy.lm(module, params), tokenizer, generation
        self.instruction, self.batch_size, self.seed, self.name = instruction, batch_size, seed, name
        self.auto_size = auto_size  # `rewrite` sizes max_new_tokens from its postings

    @property
    def stop_id(self) -> int:
        eot = getattr(self.tokenizer, "end_of_turn_id", None)
        if eot is not None:
            return int(eot)
        eos = self.tokenizer.hf.eos_token_id
        return int(eos) if eos is not None else int(self.tokenizer.eoa_id)

    def size(self, postings: Sequence[str]) -> dict:
        """Set max_new_tokens from the postings' token lengths (see the module docstring)."""
        n_new, why = size_for(self.tokenizer, self.policy.model.config.max_positions, postings)
        self.generation = dataclasses.replace(self.generation, max_new_tokens=n_new)
        return {"max_new_tokens": n_new, "max_new_tokens_reason": why + " (instruct tokenizer)"}

    def _ids(self, text: str, budget: int) -> tuple[list[int], bool]:
        def wrap(t: str) -> list[int]:
            msg = f"{self.instruction}\n\n{t}"
            if self.tokenizer.use_chat_template:
                return self.tokenizer.apply_chat_template(msg)
            return self.tokenizer.encode_text(msg + "\n\nRewritten posting:\n")

        ids = wrap(text)
        if len(ids) <= budget:
            return ids, False
        body = self.tokenizer.encode_text(text)
        keep = max(0, len(body) - (len(ids) - budget) - 1)
        return wrap(self.tokenizer.decode(body[:keep]))[-budget:], True

    def rewrite_rows(self, originals: Sequence[str], prompts=None, metadata=None, rng=None) -> list[dict]:
        import jax

        budget = self.policy.model.config.max_positions - self.generation.max_new_tokens
        laid = [self._ids(t, budget) for t in originals]
        rng = jax.random.PRNGKey(self.seed) if rng is None else rng
        gens = generate_texts(self.policy, self.tokenizer, list(originals), self.generation, rng=rng,
                              batch_size=self.batch_size, prompt_ids=[x for x, _ in laid],
                              stop_id=self.stop_id)
        return _sample_rows(gens, [c for _, c in laid])

    def rewrite(self, texts: Sequence[str]) -> list[str]:
        if self.auto_size:
            self.size(texts)
        return [r["text"] for r in self.rewrite_rows(texts)]


def job_prompts(texts: Sequence[str]) -> list[str]:
    """The job-rewrite prompt of each posting (`data.jobs.build_prompt` with its header fields)."""
    return [build_prompt(t, **extract_fields(t)) for t in texts]


def size_for(tokenizer: Any, max_positions: int, postings: Sequence[str], percentile: float = 95.0,
             margin: int = 16) -> tuple[int, str]:
    """(max_new_tokens, why): the `percentile` of the postings' token lengths + `margin`, capped at
    half of the model's positions."""
    lengths = [len(tokenizer.encode_text(t)) for t in postings] or [1]
    want = int(np.ceil(np.percentile(lengths, percentile))) + margin
    return max(1, min(want, max_positions - max_positions // 2)), (
        f"p{percentile:g} of the postings' token lengths + {margin}, capped at half of "
        f"{max_positions} positions")


class PolicyRewriter:
    """A fairjax policy (run dir, model dir) sampled on the job-rewrite layout; `rewrite` sizes
    max_new_tokens from the postings when `generation.max_new_tokens` is 0."""

    def __init__(self, policy: Any, tokenizer: Any, generation: Any, name: str, batch_size: int = 8,
                 seed: int = 0, auto_size: bool = True):
        self.policy, self.tokenizer, self.generation, self.name = policy, tokenizer, generation, name
        self.batch_size, self.seed, self.auto_size = batch_size, seed, auto_size

    def rewrite(self, texts: Sequence[str]) -> list[str]:
        import jax

        gen = self.generation
        if self.auto_size:
            n, _ = size_for(self.tokenizer, self.policy.model.config.max_positions, texts)
            gen = dataclasses.replace(gen, max_new_tokens=n)
        sample = policy_sampler(self.policy, self.tokenizer, gen, self.batch_size)
        return [r["text"] for r in sample(job_prompts(texts), jax.random.PRNGKey(self.seed))]


def score_with(scorer: Any, texts: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """[N] rewards of `texts`; a scorer with `needs_reference` gets the originals."""
    if getattr(scorer, "needs_reference", False):
        return np.asarray(scorer.score_texts(list(texts), list(references)), np.float64)
    return np.asarray(scorer.score_texts(list(texts)), np.float64)


class BestOfN:
    """n samples from `sample(prompts, rng) -> [row]` per prompt; the best faithful one under
    `reward` (module docstring)."""

    name = "best_of_n"

    def __init__(self, sample: Callable[[Sequence[str], Any], list[dict]], n: int, reward: Any,
                 faithfulness: Faithfulness, name: str = "best_of_n"):
        if n < 1:
            raise ValueError(f"best_of_n: n={n}; expected >= 1")
        self.sample, self.n, self.reward, self.faithfulness, self.name = sample, n, reward, faithfulness, name

    def choose(self, originals: Sequence[str], candidates: Sequence[Sequence[str]],
               metadata: Optional[Sequence[Optional[dict]]] = None) -> list[dict]:
        """candidates [n][N] texts -> per posting {index, faithful, n_faithful, candidate_reward}."""
        N, n = len(originals), len(candidates)
        flat = [c[i] for i in range(N) for c in candidates]  # [N * n], row-major per posting
        refs = [o for o in originals for _ in range(n)]
        meta = [m for m in (metadata or [None] * N) for _ in range(n)]
        rewards = score_with(self.reward, flat, refs).reshape(N, n)
        ok, cos = self.faithfulness(refs, flat, meta)
        ok, cos = ok.reshape(N, n), np.nan_to_num(cos.reshape(N, n), nan=-np.inf)
        idx, has = best_faithful(rewards, ok)
        idx = np.where(has, idx, np.argmax(cos, axis=1))
        return [{"index": int(idx[i]), "faithful": bool(has[i]), "n_faithful": int(ok[i].sum()),
                 "candidate_reward": float(rewards[i, idx[i]])} for i in range(N)]

    def rewrite_rows(self, originals: Sequence[str], prompts: Sequence[str], metadata=None,
                     rng=None) -> list[dict]:
        import jax

        rng = jax.random.PRNGKey(0) if rng is None else rng
        samples = [self.sample(prompts, jax.random.fold_in(rng, k)) for k in range(self.n)]
        picks = self.choose(originals, [[r["text"] for r in s] for s in samples], metadata)
        return [{**samples[p["index"]][i], **{k: v for k, v in p.items() if k != "index"}}
                for i, p in enumerate(picks)]

    def rewrite(self, texts: Sequence[str]) -> list[str]:
        return [r["text"] for r in self.rewrite_rows(texts, job_prompts(texts))]


def policy_sampler(policy: Any, tokenizer: Any, generation: Any, batch_size: int = 16,
                   max_prompt_tokens: Optional[int] = None) -> Callable[[Sequence[str], Any], list[dict]]:
    """`sample(prompts, rng) -> [row]` of a fairjax policy on the job layout (`generate_texts`)."""
    def sample(prompts: Sequence[str], rng: Any) -> list[dict]:
        gens = generate_texts(policy, tokenizer, list(prompts), generation, rng=rng,
                              batch_size=batch_size, max_prompt_tokens=max_prompt_tokens)
        limit = policy.model.config.max_positions - generation.max_new_tokens
        if max_prompt_tokens:
            limit = min(limit, max_prompt_tokens)
        return _sample_rows(gens, [len(prompt_tokens(tokenizer, p)) > limit for p in prompts])

    return sample


def load_rewriter(model: str, *, temperature: float = 0.7, batch_size: int = 8,
                  seed: int = 0) -> Any:
    """A rewriter with `.name` and `.rewrite(texts) -> list[str]`: a text baseline name
    (`lexicon_swap`, `inclusion_statement`), `prompted[:SOURCE]` or a preset (an instruct model
    zero-shot, default SOURCE `PROMPTED_MODEL`), or a path `fairjax.runs.load` reads (a run or
    model dir: `PolicyRewriter`)."""
    if model in TEXT_BASELINES:
        return text_baseline(model).rewriter
    gen = GenerationConfig(max_new_tokens=1, mode="sample", temperature=temperature,
                           top_p=PROMPTED_SAMPLING["top_p"])
    if model == "prompted" or model.startswith("prompted:") or model in PRESETS:
        source = model.partition(":")[2] or (model if model in PRESETS else PROMPTED_MODEL)
        module, params, tok = load(source)
        return PromptedRewriter(module, params, tok, gen, batch_size=batch_size, seed=seed,
                                        name=f"prompted:{source}", auto_size=True)
    if not os.path.exists(model):
        raise ValueError(f"--model={model!r}: not a baseline ({', '.join(sorted(TEXT_BASELINES))}), "
                         "'prompted[:SOURCE]', a preset or an existing run/model directory")
    module, params, tok = load(model)
    return PolicyRewriter(Policy.lm(module, params), tok, gen, name=model,
                                  batch_size=batch_size, seed=seed)
