"""Evaluate rewrites: `python -m fairjax.evaluate --config=configs/eval.py [--config.x=...]`.

FMs-at-work `eval_policy` + `distill_policy_eval` + `impact_ratio_calc` in one resumable command:

1. load the systems: `checkpoint` (a fairjax run dir — for an ILQL run each `variants` entry
   `name:adv_weight` decodes with the three trunks and β = adv_weight, β = 0 being the policy
   trunk alone, i.e. the BC policy when awac_weight = 0; other sources — fairjax model dir, HF dir,
   FMs-at-work BC `.pkl` with `base` — sample from the LM), plus `extra_checkpoints`
   (`name=path,...`, each sampled plainly), and the `baselines` (`fairjax.systems`):
   `lexicon_swap`, `inclusion_statement` (text rules), `prompted` (an instruct model zero-shot,
   `prompted.*`), `best_of_n` (`best_of_n.n` samples of a policy, the best faithful one under
   its training reward, `best_of_n.*`); a baseline's `nll` columns are under the checkpoint's LM;
   `checkpoint = ""` evaluates the text/prompted baselines alone (FL then from `fluency_model`);
2. read the eval postings (`data.eval`; "" = the checkpoint run's eval split), build each prompt
   with the job template, and rewrite **every prompt once, in order** (upstream drew prompts with
   replacement);
3. score the original and every rewrite with the same scorer (diversity reward with its share
   distances, selection and impact ratios per group and four-fifths flags; gender-coded wording
   verdict; PII; length) and each system's own per-token NLL of the original and of its rewrite;
   and what each rewrite keeps of its original (`eval.preservation`: cosine under the scorer's
   embedder, chrF, skills kept, header fields kept, length ratio); with `fluency_model` set, the
   per-token NLL of the original and of each rewrite on its own (no prompt) under that one
   model (`fl_nll`); `nll_columns = False` skips the per-system NLLs;
4. write OUTPUT_DIR/eval_logs.jsonl (one row per prompt, all fields), summary.json (top level:
   `trained_reward` of the checkpoint, `reported_reward`, a `sanity` row with the reward of
   word-shuffled and generic text against the originals; per system: headline means with bootstrap
   CIs, `finished_share` (rewrites that ended with `</a>`), `preservation`, corpus selection tables
   per attribute in fairlearn's MetricFrame shape, paired and length-controlled differences vs the
   original; `joint`: SIM, ACC, FL, J, identity retrieval, coded words before/after, Δ diversity
   (`eval.joint`); `constrained_reward`; `unmatched_share`; the sanity rows also under the
   constrained reward) and report/ (`eval.report`: headline and joint tables, verdict, examples,
   appendix, figures incl. the SIM vs Δ diversity Pareto plot).

`generation.max_new_tokens = 0` (default) takes the `generation.length_percentile` percentile of the
eval postings' token lengths (+1 for `</a>`); any value is capped so that at least half of each
system's model context stays for the prompt (the quoted original), and the summary says which
value was used and why, with the share of prompts that had to be cut to fit.

Resumable: rows are appended a batch at a time; a re-run keeps the rows already written (a
truncated last line from a crash is dropped) and continues after them.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
import zlib
from pathlib import Path
from typing import Any, Optional, Sequence

from fairjax import faults, systems as B
from fairjax.agents import registry
from fairjax.data.config import DataConfig
from fairjax.data.jobs import JobsDataset
from fairjax.data.layout import bucket_for, frame_prompt, prompt_tokens
from fairjax.data.sources import SourceStats
from fairjax.eval import fairness, joint, preservation, stats
from fairjax.eval.report import reward_name, summarize_systems, write_report
from fairjax.eval.report_html import write_report_html
from fairjax.generate import GenerationConfig, Policy, generate_texts
from fairjax.io.run_dir import is_run_dir, load_config
from fairjax.rewards.constrained import ConstrainedConfig, ConstrainedScorer
from fairjax.rewards.diversity import DiversityRewardConfig, DiversityScorer
from fairjax.rewards.embedders import config_embedder, make_embedder
from fairjax.rewards.pool import CandidatePool, load_pool
from fairjax.rewards.registry import build_reward_scorer, reward_config, split_list, trained_reward
from fairjax.runs import load, restore_run
from fairjax.score import score
from fairjax.typed_config import typed_block

LOG_FILE = "eval_logs.jsonl"
SUMMARY_FILE = "summary.json"
REPORT_DIR = "report"
HEADLINE = ("reward", "ir_female", "ir_male", "has_pii", "n_chars", "nll", "nll_original")
SANITY_TEXT = "We are hiring. Join our team. Apply now."  # degenerate rewrite for the sanity row


@dataclasses.dataclass
class System:
    """One way of rewriting: a decoding policy, its tokenizer and generation settings."""

    name: str
    policy: Any  # fairjax.generate.Policy
    tokenizer: Any
    generation: Any  # fairjax.generate.GenerationConfig
    nll_params: Any  # policy LM params for the NLL columns
    source: str
    # a baseline (`fairjax.systems`): its rows come from `rewriter.rewrite_rows(...)`; `policy`,
    # `tokenizer` and `nll_params` are then the checkpoint's, for the NLL columns
    rewriter: Any = None


# ----------------------------------------------------------------------------- systems
def _generation(cfg: Any, adv_weight: float = 0.0):
    g = cfg.generation
    # max_new_tokens = 0 ("from the data") is resolved per system by `_size_generation`
    return GenerationConfig(max_new_tokens=max(1, g.max_new_tokens), mode=g.mode, temperature=g.temperature,
                            top_k=g.top_k, top_p=g.top_p, num_beams=g.num_beams,
                            num_generations=g.num_generations, adv_weight=float(adv_weight),
                            exp_adv=g.exp_adv, adv_clip=g.adv_clip if g.adv_clip > 0 else None)


def parse_variants(spec: str) -> list[tuple[str, float]]:
    """"bc:0,ilql_b8:8" -> [("bc", 0.0), ("ilql_b8", 8.0)]."""
    out = []
    for item in [s.strip() for s in spec.split(",") if s.strip()]:
        name, sep, w = item.partition(":")
        try:
            out.append((name.strip(), float(w) if sep else 0.0))
        except ValueError:
            raise ValueError(f"config.variants: {item!r} is not NAME:ADV_WEIGHT") from None
    names = [n for n, _ in out]
    if len(set(names)) != len(names) or "original" in names:
        raise ValueError(f"config.variants: names must be unique and not 'original': {names}")
    return out


def parse_named_paths(spec: str) -> list[tuple[str, str]]:
    """"alol=runs/a,bc=runs/b" -> [("alol", "runs/a"), ("bc", "runs/b")]."""
    out = []
    for item in [s.strip() for s in spec.split(",") if s.strip()]:
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise ValueError(f"config.extra_checkpoints: {item!r} is not NAME=PATH")
        out.append((name.strip(), path.strip()))
    return out


def load_systems(cfg: Any) -> tuple[list[System], Optional[str]]:
    """The systems to evaluate and, for a run dir checkpoint, its eval data path."""
    systems: list[System] = []
    eval_path = None
    checkpoints = [("", cfg.checkpoint)] + parse_named_paths(cfg.extra_checkpoints)
    if not cfg.checkpoint:
        if cfg.extra_checkpoints or not parse_baselines(cfg.get("baselines", "")):
            raise ValueError("config.checkpoint is empty: give a run dir, model dir, HF dir or "
                             ".pkl, or config.baselines alone (no extra_checkpoints)")
        systems = load_baselines(cfg, None)  # baselines only: no policy, no NLL columns
        return systems, None
    for i, (name, path) in enumerate(checkpoints):
        if not path:
            raise ValueError("config.checkpoint is empty: give a run dir, model dir, HF dir or .pkl")
        primary = i == 0
        if _is_run_dir(path):
            run = restore_run(path, None if cfg.step == "best" else
                              (cfg.step if cfg.step == "latest" else int(cfg.step)))
            module, lm = run.algorithm.policy(run.params, run.frozen)
            if primary:
                eval_path = _run_eval_path(run.config, path)
            spec = registry.get(run.config.algorithm)
            if primary and spec.decoding.value_guided:
                fields = spec.decoding.guided(run.config, *run.algorithm.merged(
                    run.params, run.frozen))  # LoRA: adapters merged
                for vname, w in parse_variants(cfg.variants):
                    pol = Policy.guided(module, fields) if w else Policy.lm(module, lm)
                    systems.append(System(vname, pol, run.tokenizer, _generation(cfg, w), lm, path))
                continue
            pol, tok = Policy.lm(module, lm), run.tokenizer
        else:
            module, lm, tok = load(path, base=cfg.base or None)
            pol = Policy.lm(module, lm)
        label = name or (parse_variants(cfg.variants)[0][0] if cfg.variants else "policy")
        systems.append(System(label, pol, tok, _generation(cfg), lm, path))
    systems += load_baselines(cfg, systems[0])
    names = [s.name for s in systems]
    if len(set(names)) != len(names):
        raise ValueError(f"system names collide: {names}")
    return systems, eval_path


BASELINES = ("lexicon_swap", "inclusion_statement", "prompted", "best_of_n")


def parse_baselines(spec: str) -> list[str]:
    """"lexicon_swap,best_of_n" -> names, each one of BASELINES, unique."""
    names = [x.strip() for x in spec.split(",") if x.strip()]
    bad = [n for n in names if n not in BASELINES]
    if bad or len(set(names)) != len(names):
        raise ValueError(f"config.baselines={spec!r}: expected distinct names from {list(BASELINES)}")
    return names


def training_scorer(path: str, fallback):
    """(scorer, description) of the reward the checkpoint at `path` trained on (a run dir with
    `reward.scorer` set; its saved reward block is typed here, fields it lacks take the
    defaults); else `fallback` (the reported diversity reward)."""
    if _is_run_dir(path):
        rc = load_config(path)
        reward = reward_config(rc.get("reward"))
        if registry.get(rc.algorithm).trains_on_reward and reward.scorer:
            pool = Path(path) / "data" / "candidates.jsonl"
            train = DataConfig.from_block(rc.data).train
            if train:
                pool = Path(train).parent / "candidates.jsonl"
            scorer = build_reward_scorer(reward, str(pool) if pool.is_file() else None,
                                         strict=False)
            return scorer, f"the training reward of {path} ({scorer.name})"
    return fallback, f"the reported reward ({fallback.name}): {path} names no training reward"


def load_baselines(cfg: Any, primary: Optional[System]) -> list[System]:
    """`config.baselines` as systems (see the module docstring); the scorer-dependent parts of
    best_of_n are attached by `evaluate` (`attach_scorer`). Without a `primary` checkpoint the
    baselines have no policy (no NLL columns); best_of_n then has no policy to sample."""
    out = []
    for name in parse_baselines(cfg.get("baselines", "")):
        if primary is None and name == "best_of_n":
            raise ValueError("config.baselines has best_of_n but config.checkpoint is empty: "
                             "best_of_n samples the checkpoint (or best_of_n.policy beside it)")
        if name in ("lexicon_swap", "inclusion_statement"):
            rw = B.text_baseline(name)
        elif name == "prompted":
            p = cfg.prompted
            module, params, tok = load(p.model)
            gen = GenerationConfig(max_new_tokens=max(1, p.max_new_tokens), mode="sample",
                                   temperature=p.temperature, top_p=p.top_p, top_k=p.top_k)
            rw = B.PromptedRewriter(module, params, tok, gen, instruction=p.instruction or B.INSTRUCTION,
                                    batch_size=p.batch_size, seed=cfg.seed)
        else:
            rw = _BestOfNPending(cfg.best_of_n, primary)
        if primary is None:
            out.append(System(name, None, None, _generation(cfg), None, "", rewriter=rw))
        else:
            out.append(System(name, primary.policy, primary.tokenizer, primary.generation,
                              primary.nll_params, primary.source, rewriter=rw))
    return out


@dataclasses.dataclass
class _BestOfNPending:
    """best_of_n before the eval scorer exists (`attach_scorer` builds the BestOfN)."""

    cfg: Any
    primary: System


def attach_scorer(cfg: Any, systems: list[System], scorer) -> dict[str, dict]:
    """Build best_of_n with its reward and faithfulness test; returns {name: settings} for the
    summary (the baselines' decoding and reward)."""
    info: dict[str, dict] = {}
    for s in systems:
        if isinstance(s.rewriter, _BestOfNPending):
            b, src = s.rewriter.cfg, s.rewriter.primary
            policy, tok, gen, source = src.policy, src.tokenizer, src.generation, src.source
            if b.policy:
                module, lm, tok = load(b.policy, base=cfg.base or None)
                policy, source = Policy.lm(module, lm), b.policy
                gen = dataclasses.replace(gen, adv_weight=0.0)
            gen = dataclasses.replace(gen, mode="sample", temperature=b.temperature,
                                      num_generations=1)
            reward, why = training_scorer(source, scorer)
            faith = B.Faithfulness(scorer.embedder, b.tau, b.require_header)
            sampler = B.policy_sampler(policy, tok, gen, cfg.batch_size,
                                       cfg.max_prompt_tokens or None)
            s.rewriter = B.BestOfN(sampler, b.n, reward, faith)
            info[s.name] = {"n": b.n, "policy": source, "reward": why, "tau": b.tau,
                            "require_header": b.require_header, "embedder": scorer.embedder.id,
                            "generation": dataclasses.asdict(gen)}
        elif isinstance(s.rewriter, B.PromptedRewriter):
            info[s.name] = {"model": cfg.prompted.model, "instruction": s.rewriter.instruction,
                            "chat_template": bool(s.rewriter.tokenizer.use_chat_template),
                            "generation": dataclasses.asdict(s.rewriter.generation)}
        elif s.rewriter is not None:
            info[s.name] = {"rule": type(s.rewriter.rewriter).__name__}
    return info


def _is_run_dir(path: str) -> bool:
    return is_run_dir(path)


def _run_eval_path(run_cfg: Any, run_dir: str) -> Optional[str]:
    """The eval split of the run at `run_dir` (config `run_cfg`): data.eval, none when data.train
    is set without it, else the demo corpus's eval split in RUN_DIR/data."""
    data = DataConfig.from_block(run_cfg.data)
    if data.eval:
        return data.eval
    if data.train:
        return None
    demo = Path(run_dir) / "data" / "jobs_eval.jsonl"
    return str(demo) if demo.is_file() else None


def trained_reward_of(path: str, adv_weight: Optional[float] = None) -> dict:
    """The reward a checkpoint was trained on (run dirs; other checkpoints: unknown). An ILQL
    variant decoded with β = 0 is the run's policy trunk, which ILQL (awac_weight = 0) never
    trains: that system is the BC policy and trained on no reward."""
    if not _is_run_dir(path):
        return {"scorer": "unknown", "note": f"{path} is not a fairjax run dir"}
    cfg = load_config(path)
    spec = registry.get(cfg.algorithm)
    if adv_weight == 0 and spec.decoding.value_guided and spec.decoding.unguided_untrained(cfg):
        return {"scorer": "none", "note": f"β = 0: the {cfg.algorithm} run's frozen policy trunk "
                                          "(its BC policy), trained on no reward"}
    return trained_reward(cfg, path, trains_on_reward=spec.trains_on_reward)


def choose_max_new_tokens(requested: int, reference_lengths: Sequence[int], max_positions: int,
                          percentile: float = 95.0) -> tuple[int, str]:
    """(max_new_tokens, why): `requested` > 0 or the `percentile` of the reference postings' token
    lengths + 1 (`</a>`), capped at max_positions − max_positions // 2 (half the context stays
    for the prompt)."""
    import numpy as np

    cap = max_positions - max(2, max_positions // 2)
    if requested > 0:
        if requested <= cap:
            return requested, "config"
        return cap, (f"config value {requested} leaves less than half of the {max_positions} "
                     f"positions for the prompt: capped to {cap}")
    if not len(reference_lengths):
        raise ValueError("generation.max_new_tokens=0 needs reference postings to size rewrites")
    want = int(np.ceil(np.percentile(np.asarray(reference_lengths), percentile))) + 1
    if want <= cap:
        return want, f"p{percentile:g} of the eval postings' token lengths + </a>"
    return cap, (f"p{percentile:g} of the eval postings' token lengths + </a> = {want}, capped to "
                 f"{cap} (half of the model's {max_positions} positions)")


def _shuffle_words(text: str, seed: int) -> str:
    import numpy as np

    words = text.split()
    np.random.default_rng(seed).shuffle(words)
    return " ".join(words)


# ----------------------------------------------------------------------------- scoring
@dataclasses.dataclass(frozen=True)
class ScorerConfig:
    """`config.scorer` (configs/eval.py), typed once by `scorer_config(cfg.scorer)`: the reported
    diversity reward's pools, matching settings and hashing dimension (checked as
    `rewards.diversity.DiversityRewardConfig`), its embedder ("" = tfidf) and the constrained
    reward's tau (checked as `rewards.constrained.ConstrainedConfig`). Absent fields: these
    defaults (tfidf and its tau, what configs before those keys used)."""

    pools: tuple[str, ...] = ()  # candidate pool JSONL(s); a comma-separated string is split
    k: int = 50
    select_k: int = 10
    distance: str = "signed_tv"
    gender_target: str = "uniform"
    region_target: str = "pool"
    embedder: str = "tfidf"
    n_features: int = 4096
    cache_dir: str = ""  # pool-embedding cache ("" = none)
    constrained_tau: float = 0.9588

    def __post_init__(self):
        object.__setattr__(self, "pools", split_list(self.pools))
        object.__setattr__(self, "embedder", config_embedder(self.embedder))
        object.__setattr__(self, "cache_dir", str(self.cache_dir or ""))
        self.diversity()  # ValueError naming the bad setting
        try:
            ConstrainedConfig(form="hard", tau=self.constrained_tau)
        except ValueError as e:
            raise ValueError(f"constrained_tau: {e}") from None

    def diversity(self):
        """The matching settings as a `rewards.diversity.DiversityRewardConfig`."""
        return DiversityRewardConfig(k=self.k, select_k=self.select_k, distance=self.distance,
                                     gender_target=self.gender_target,
                                     region_target=self.region_target, n_features=self.n_features)


def scorer_config(block: Any) -> ScorerConfig:
    """`cfg.scorer` as a ScorerConfig (ConfigError naming config.scorer.<field>)."""
    return typed_block(block, ScorerConfig, "scorer")


def build_scorer(s: ScorerConfig, eval_path: str):
    """DiversityScorer over `s.pools` (`config.scorer.pools`; none = the candidates.jsonl
    beside the eval data, which only the demo corpus has: real postings without a pool are
    refused rather than scored against synthetic candidates)."""
    paths = list(s.pools)
    if not paths:
        beside = Path(eval_path).parent / "candidates.jsonl"
        if not beside.is_file():
            raise ValueError(f"config.scorer.pools is empty and {eval_path} has no candidate pool "
                             "beside it (only the demo corpus does): give the candidate pool "
                             "JSONL(s) to score the postings against")
        paths = [str(beside)]
    pool = CandidatePool.concat([load_pool(p) for p in paths])
    return DiversityScorer(pool, make_embedder(s.embedder, s.n_features),
                           s.diversity().scorer_config(), cache_dir=s.cache_dir or None)


def score_texts(texts: Sequence[str], scorer) -> list[dict]:
    """Per-text score dicts (reward, shares, ir_*/sr_*, four-fifths flags, verdict, PII, length)."""
    rows, _ = score([{"id": str(i), "text": t} for i, t in enumerate(texts)], scorer)
    for r, t in zip(rows, texts):
        r.pop("id")
        r["n_chars"] = len(t)
        r["has_pii"] = bool(r["pii_per_char"] > 0)
    return rows


_NLL_FNS: dict = {}


def response_nll(policy_module, lm_params, tok, prompts: Sequence[str], responses: Sequence[str],
                 max_len: int, batch_size: int = 16) -> list[float]:
    """Mean per-token NLL of each `response</a>` after `<s>{prompt}</s>` under the LM (prompt
    trimmed from the left to fit `max_len`; the response is cut to fit when it alone is too long)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    key = id(policy_module)
    if key not in _NLL_FNS:
        def nll(params, ids, mask, target_mask):
            logits = policy_module.apply({"params": params}, ids, mask).logits[:, :-1]
            logp = jax.nn.log_softmax(logits, -1)
            tok_lp = jnp.take_along_axis(logp, ids[:, 1:, None], -1)[..., 0]
            w = target_mask[:, 1:]
            return -(tok_lp * w).sum(-1) / jnp.maximum(w.sum(-1), 1)
        _NLL_FNS[key] = jax.jit(nll)
    fn = _NLL_FNS[key]
    rows = []
    for p, r in zip(prompts, responses):
        framed = frame_prompt(tok, p)  # a chat template's head/tail always stay
        resp = tok.encode_text(r)[: max_len - 3 - framed.frame_len] + [tok.eoa_id]
        pr = prompt_tokens(tok, framed, max_len=max(2 + framed.frame_len, max_len - len(resp)))
        rows.append((np.concatenate([pr, np.asarray(resp, np.int32)]), len(pr)))
    out = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        width = bucket_for(max(len(x) for x, _ in chunk), (64, 128, 256, 512, 1024, 2048, 4096))
        ids = np.full((batch_size, width), tok.pad_id, np.int32)
        mask = np.zeros((batch_size, width), np.int32)
        tmask = np.zeros((batch_size, width), np.float32)
        for j, (x, n_prompt) in enumerate(chunk):
            ids[j, :len(x)], mask[j, :len(x)], tmask[j, n_prompt:len(x)] = x, 1, 1.0
        out += [float(v) for v in np.asarray(fn(lm_params, ids, mask, tmask))[:len(chunk)]]
    return out


# ----------------------------------------------------------------------------- log file
def read_log(path: Path) -> list[dict]:
    """Rows already written; a truncated (crash) last line is dropped and the file repaired."""
    if not path.is_file():
        return []
    rows, good_bytes = [], 0
    with open(path, "rb") as f:
        data = f.read()
    for line in data.splitlines(keepends=True):
        try:
            if not line.endswith(b"\n"):
                raise ValueError("no newline")
            rows.append(json.loads(line))
            good_bytes += len(line)
        except ValueError:
            break
    if good_bytes != len(data):
        with open(path, "r+b") as f:
            f.truncate(good_bytes)
    return rows


def _append(path: Path, rows: Sequence[dict]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        f.flush()
        os.fsync(f.fileno())


# ----------------------------------------------------------------------------- main
def evaluate(cfg: Any) -> dict:
    """Run the evaluation described by `cfg` (configs/eval.py); returns the summary dict."""
    import jax

    if not cfg.fluency_model and (not cfg.checkpoint or not cfg.nll_columns):
        raise ValueError("config.fluency_model is empty and there are no NLL columns (no "
                         "checkpoint, or nll_columns=False): FL needs a model, e.g. "
                         "--config.fluency_model=smollm2-135m-instruct")
    sc_cfg = scorer_config(cfg.scorer)  # checked before any model loads
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = DataConfig.from_block(cfg.data)  # configs/eval.py: eval, text_field, on_error
    systems, run_eval = load_systems(cfg)
    eval_path = data.eval or run_eval
    if not eval_path:
        raise ValueError("config.data.eval is empty and the checkpoint is not a run dir with an "
                         "eval split: give the eval JSONL/CSV")
    ds = JobsDataset.from_file(eval_path, text_field=data.text_field, on_error=data.on_error)
    r = ds.read_stats  # data.on_error=skip: what was dropped is counted and reported
    read = SourceStats(eval_path, lines=r.lines, kept=r.kept, skipped=r.skipped,
                       errors=list(r.errors)).to_dict()
    print(read["line"], flush=True)
    examples = list(ds)[: cfg.limit or None]
    if not examples:
        raise ValueError(f"{eval_path}: no postings to evaluate")
    log = out / LOG_FILE
    done = read_log(log)
    for i, row in enumerate(done):
        if row.get("index") != i or row.get("id") != examples[i].id:
            raise ValueError(f"{log}:{i + 1}: row for {row.get('id')!r} does not match prompt "
                             f"{i} ({examples[i].id!r}) of {eval_path}: use a new output_dir")
    scorer = build_scorer(sc_cfg, eval_path)
    gen_info = _size_generation(cfg, systems, examples)
    baselines = attach_scorer(cfg, systems, scorer)
    for s in systems:
        if hasattr(s.rewriter, "size"):
            size = (s.rewriter.size([e.response for e in examples]) if cfg.prompted.max_new_tokens <= 0
                    else {"max_new_tokens": s.rewriter.generation.max_new_tokens,
                          "max_new_tokens_reason": "config"})
            baselines[s.name]["generation"] = {**dataclasses.asdict(s.rewriter.generation), **size}
    rng = jax.random.PRNGKey(cfg.seed)
    fluency = load_fluency_model(cfg.fluency_model, cfg.batch_size)
    chunk = cfg.batch_size * max(1, cfg.chunk_batches)
    t0, n_new = time.perf_counter(), 0
    for start in range(len(done), len(examples), chunk):
        batch = examples[start:start + chunk]
        prompts = [e.prompt for e in batch]
        originals = [e.response for e in batch]
        rows = [{"index": start + j, "id": e.id, "prompt": e.prompt,
                 "original": {"text": e.response}} for j, e in enumerate(batch)]
        orig_vecs = scorer.embedder.embed(originals)
        nll_originals: dict[int, list[float]] = {}
        for s in systems:
            key = jax.random.fold_in(jax.random.fold_in(rng, start), zlib.crc32(s.name.encode()) % (2 ** 31))
            if s.rewriter is not None:
                gens = s.rewriter.rewrite_rows(originals, prompts, [e.metadata for e in batch], key)
            else:
                gens = generate_texts(s.policy, s.tokenizer, prompts, s.generation, rng=key,
                                      batch_size=cfg.batch_size,
                                      max_prompt_tokens=cfg.max_prompt_tokens or None)
            texts = [g["text"] for g in gens]
            kept = preservation.preservation_rows(originals, texts, orig_vecs,
                                                  scorer.embedder.embed(texts),
                                                  [e.metadata for e in batch])
            if s.policy is not None:
                limit = gen_info[s.name]["prompt_limit"]
                cut = [len(prompt_tokens(s.tokenizer, p)) > limit for p in prompts]
            else:
                cut = [False] * len(prompts)
            nll = nll_o = [None] * len(texts)
            if cfg.nll_columns and s.nll_params is not None:
                max_len = s.policy.model.config.max_positions
                nll = response_nll(s.policy.model, s.nll_params, s.tokenizer, prompts, texts,
                                   max_len, cfg.batch_size)
                if id(s.nll_params) not in nll_originals:
                    nll_originals[id(s.nll_params)] = response_nll(
                        s.policy.model, s.nll_params, s.tokenizer, prompts, originals, max_len,
                        cfg.batch_size)
                nll_o = nll_originals[id(s.nll_params)]
            for j, (row, g, sc, a, b) in enumerate(zip(rows, gens, score_texts(texts, scorer), nll,
                                                        nll_o)):
                std = ("finished", "log_prob", "kl", "adv_sum", "num_new_tokens")
                extra = {k: v for k, v in g.items()  # best_of_n: faithful, n_faithful, ...
                         if k not in std + ("text", "prompt", "tokens", "prompt_truncated")}
                row[s.name] = {"text": g["text"], **sc, "nll": a, "nll_original": b,
                               **{k: g[k] for k in std},
                               **{k: float(v[j]) for k, v in kept.items()},
                               "prompt_truncated": bool(g.get("prompt_truncated", cut[j])), **extra}
            if fluency is not None:
                for row, v in zip(rows, fluency(texts)):
                    row[s.name]["fl_nll"] = v
        for row, sc in zip(rows, score_texts(originals, scorer)):
            row["original"].update(sc)
        if fluency is not None:
            for row, v in zip(rows, fluency(originals)):
                row["original"]["fl_nll"] = v
        _append(log, rows)
        faults.inject("eval", start + len(rows))
        n_new += len(rows)
        print(f"evaluate: {start + len(rows)}/{len(examples)} prompts "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
    rows = read_log(log)
    names = ["original"] + [s.name for s in systems]
    by_system = {n: [{k: v for k, v in r[n].items() if k != "text"} for r in rows] for n in names}
    reported = {"scorer": "diversity", "pool": scorer.pool.describe(),
                "embedder": scorer.embedder.id,
                "settings": {k: getattr(sc_cfg, k) for k in ("k", "select_k", "distance",
                                                              "gender_target", "region_target")}}
    trained = {s.name: ({"scorer": "baseline", "note": f"{s.name}: not trained"} if s.rewriter
                        is not None else trained_reward_of(s.source, s.generation.adv_weight))
               for s in systems}
    meta = {"checkpoint": cfg.checkpoint, "extra_checkpoints": cfg.extra_checkpoints,
            "eval_data": eval_path, "eval_read": read, "n_prompts": len(rows), "systems": names,
            "trained_reward": trained_reward_of(cfg.checkpoint), "trained_reward_by_system": trained,
            "reported_reward": reported,
            "scorer": {"pool": scorer.pool.describe(), "embedder": scorer.embedder.id},
            "generation": {s.name: {**dataclasses.asdict(s.generation), **gen_info[s.name]}
                           for s in systems if s.rewriter is None},
            "baselines": {s.name: baselines.get(s.name, {}) for s in systems
                          if s.rewriter is not None}}
    numbers = summarize_systems(by_system, "original", n_boot=cfg.n_boot, seed=cfg.seed)
    summary = headline(numbers, meta)
    extras = corpus_tables(by_system, scorer, n_boot=cfg.n_boot, seed=cfg.seed)
    for name, entry in extras.items():
        summary["systems"][name].update(entry)
    constrained = constrained_scorer(scorer, sc_cfg.constrained_tau)
    for name, entry in joint_tables(rows, names, scorer, constrained, cfg.n_boot, cfg.seed).items():
        summary["systems"][name].update(entry)
    summary["joint_note"] = JOINT_NOTE + (f" FL under {cfg.fluency_model}." if cfg.fluency_model
                                          else " FL under each system's own model.")
    summary["sanity"] = sanity_rows([r["original"]["text"] for r in rows],
                                    by_system["original"], scorer, cfg.n_boot, cfg.seed,
                                    constrained)
    summary["four_fifths_note"] = fairness.FOUR_FIFTHS_NOTE
    examples = [{"id": r["id"], **{n: r[n]["text"] for n in names}} for r in rows[:3]]
    paths = write_report(out / REPORT_DIR, by_system, meta, n_boot=cfg.n_boot, seed=cfg.seed,
                         title="fairjax evaluation: original postings vs rewrites",
                         headline=summary, examples=examples)
    summary["report"] = {**paths, "html": str(out / REPORT_DIR / "report.html")}
    with open(out / SUMMARY_FILE, "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1, default=float)
        f.write("\n")
    write_report_html(out)
    return summary


def _size_generation(cfg: Any, systems: list[System], examples: Sequence[Any]) -> dict[str, dict]:
    """Set each system's max_new_tokens (`choose_max_new_tokens`); returns {name: {max_new_tokens,
    max_new_tokens_reason, prompt_limit}} for the summary."""
    lengths: dict[int, list[int]] = {}
    info = {}
    for s in systems:
        if s.policy is None:  # a text baseline evaluated without a checkpoint
            continue
        key = id(s.tokenizer)
        if key not in lengths:
            lengths[key] = [len(s.tokenizer.encode_text(e.response)) for e in examples]
        n_pos = s.policy.model.config.max_positions
        n_new, why = choose_max_new_tokens(cfg.generation.max_new_tokens, lengths[key], n_pos,
                                           cfg.generation.length_percentile)
        s.generation = dataclasses.replace(s.generation, max_new_tokens=n_new)
        limit = n_pos - n_new
        if cfg.max_prompt_tokens:
            limit = min(limit, cfg.max_prompt_tokens)
        info[s.name] = {"max_new_tokens": n_new, "max_new_tokens_reason": why, "prompt_limit": limit}
    return info


def corpus_tables(by_system: dict, scorer, n_boot: int, seed: int) -> dict[str, dict]:
    """Per rewrite system: finished_share, preservation means (CIs), prompt-truncation share,
    selection tables per attribute (MetricFrame shape), reward differences vs the original and vs
    the first rewrite system, raw and length-controlled (n_chars)."""
    import numpy as np

    def col(name: str, key: str) -> np.ndarray:
        return np.array([np.nan if r.get(key) is None else float(r[key]) for r in by_system[name]])

    names = list(by_system)
    rewriters = [n for n in names if n != "original"]
    out: dict[str, dict] = {}
    for name in names:
        rows = by_system[name]
        entry: dict[str, Any] = {"fairness": {}}
        for a in scorer.attrs:
            g = scorer.names[a]
            if all(f"n_pool_{x}" in rows[0] for x in g):
                entry["fairness"][a] = fairness.selection_table(
                    np.stack([col(name, f"n_sel_{x}") for x in g], 1),
                    np.stack([col(name, f"n_pool_{x}") for x in g], 1), g, n_boot=n_boot, seed=seed)
        if name != "original":
            s = stats.mean_std_ci(col(name, "finished"), n_boot=n_boot, seed=seed)
            entry["finished_share"] = {k: s[k] for k in ("mean", "ci_low", "ci_high", "n")}
            entry["prompt_truncated_share"] = float(np.nanmean(col(name, "prompt_truncated")))
            entry["preservation"] = {
                m: {k: v for k, v in stats.mean_std_ci(col(name, m), n_boot=n_boot, seed=seed).items()
                    if k in ("mean", "ci_low", "ci_high", "n")}
                for m in preservation.METRICS if m in rows[0]}
            lc = {"vs_original": preservation.length_controlled_difference(
                col("original", "reward"), col(name, "reward"), col("original", "n_chars"),
                col(name, "n_chars"), n_boot=n_boot, seed=seed)}
            if rewriters and name != rewriters[0]:
                lc[f"vs_{rewriters[0]}"] = preservation.length_controlled_difference(
                    col(rewriters[0], "reward"), col(name, "reward"), col(rewriters[0], "n_chars"),
                    col(name, "n_chars"), n_boot=n_boot, seed=seed)
            entry["reward_length_controlled"] = lc
        out[name] = entry
    return out


def sanity_texts(originals: Sequence[str], seed: int) -> dict[str, list[str]]:
    """Texts that no longer describe the job, one per original: its words shuffled, one generic
    text, its first half (by words), the empty text."""
    return {"shuffled_words": [_shuffle_words(t, seed + i) for i, t in enumerate(originals)],
            "generic_text": [SANITY_TEXT] * len(originals),
            "first_half": [" ".join(t.split()[: len(t.split()) // 2]) for t in originals],
            "empty": [""] * len(originals)}


def sanity_rows(originals: Sequence[str], original_rows: Sequence[dict], scorer, n_boot: int,
                seed: int, constrained=None) -> dict:
    """Reported reward of the `sanity_texts` against the originals (paired), and under the
    constrained reward (`constrained`, each original its own reference) when given: a reward that
    rates these above the original can be gamed. `unmatched_share`: texts that matched no
    candidate (no embedding features), scored as no match."""
    base = [r["reward"] for r in original_rows]
    out = {"original": stats.mean_std_ci(base, n_boot=n_boot, seed=seed)}
    if constrained is not None:
        c_base = constrained.score_texts(originals, originals)
        out["original"]["constrained"] = stats.mean_std_ci(c_base, n_boot=n_boot, seed=seed)
    for name, texts in sanity_texts(originals, seed).items():
        sc = score_texts(texts, scorer)
        r = [x["reward"] for x in sc]
        out[name] = {**stats.mean_std_ci(r, n_boot=n_boot, seed=seed),
                     "vs_original": stats.paired_comparison(base, r, n_boot=n_boot, seed=seed),
                     "unmatched_share": sum(x["n_matched"] == 0 for x in sc) / max(len(sc), 1)}
        if constrained is not None:
            c = constrained.score_texts(texts, originals)
            out[name]["constrained"] = {
                **stats.mean_std_ci(c, n_boot=n_boot, seed=seed),
                "vs_original": stats.paired_comparison(c_base, c, n_boot=n_boot, seed=seed)}
    out["generic_text"]["text"] = SANITY_TEXT
    return out


JOINT_NOTE = ("Joint metrics per rewrite vs its original: SIM = embedder cosine; ACC = diversity "
              "reward above the original's and no more masculine-coded words; FL = min(1, "
              "exp(nll_original - nll_rewrite)); J = mean(ACC*SIM*FL) (Krishna et al. 2020); "
              "retrieval = share of rewrites whose nearest original is their own (chance 1/N).")


def constrained_scorer(scorer, tau: float):
    """The constrained (faithful-rewrite) reward over the evaluation's diversity scorer, hard form."""
    return ConstrainedScorer(scorer, ConstrainedConfig(form="hard", tau=float(tau)), strict=False)


def joint_tables(rows: Sequence[dict], names: Sequence[str], scorer, constrained, n_boot: int,
                 seed: int) -> dict[str, dict]:
    """Per system: `unmatched_share` (texts that matched no candidate); per rewrite system also
    `joint` (`fairjax.eval.joint.summarize_joint`: SIM, ACC, FL, J, retrieval, coded words before/
    after, Δ diversity, with CIs) and `constrained_reward` (mean with CI, faithful share). FL uses
    the `fl_nll` columns when the rows have them (eval.fluency_model), else the system's own
    `nll` / `nll_original`."""
    import numpy as np

    def col(name: str, key: str, default=np.nan) -> np.ndarray:
        return np.array([float(r[name][key]) if r[name].get(key) is not None else default
                         for r in rows])

    originals = [r["original"]["text"] for r in rows]
    orig_vecs = scorer.embedder.embed(originals)
    out: dict[str, dict] = {}
    for name in names:
        entry: dict[str, Any] = {"unmatched_share": float(np.mean(col(name, "n_matched", 0) == 0))}
        if name != "original":
            texts = [r[name]["text"] for r in rows]
            own = "fl_nll" in rows[0][name] and "fl_nll" in rows[0]["original"]
            nll = (col(name, "fl_nll"), col("original", "fl_nll")) if own else \
                (col(name, "nll"), col(name, "nll_original"))
            cols = joint.joint_rows(scorer.embedder.embed(texts), orig_vecs, col(name, "reward"),
                                    col("original", "reward"), col(name, "masculine"),
                                    col("original", "masculine"), *nll)
            coded = {k: (col("original", k), col(name, k)) for k in ("masculine", "feminine")}
            entry["joint"] = joint.summarize_joint(cols, n_boot, seed, coded=coded,
                                                   diversity=(col("original", "reward"),
                                                              col(name, "reward")))
            c = constrained.evaluate(texts, originals)
            entry["constrained_reward"] = {
                **{k: v for k, v in stats.mean_std_ci(c.reward, n_boot=n_boot, seed=seed).items()
                   if k in ("mean", "ci_low", "ci_high", "n")},
                "faithful_share": float(c.faithful.mean()), "tau": constrained.config.tau}
        out[name] = entry
    return out


def load_fluency_model(name: str, batch_size: int = 16):
    """None for "" (each system's own NLLs), else fn(texts) -> the mean per-token NLL [N] of each
    text on its own (no prompt: fluency, not closeness to the original) under that one model
    (`fairjax.runs.load`: path or preset), memoised by text (a baseline that leaves a posting
    unchanged costs nothing)."""
    if not name:
        return None
    module, params, tok = load(name)
    max_len = module.config.max_positions
    memo: dict[str, float] = {}

    def fluency(texts: Sequence[str]) -> list[float]:
        todo = sorted({t for t in texts if t not in memo})
        for t, v in zip(todo, text_nll(module, params, tok, todo, max_len, batch_size)):
            memo[t] = v
        return [memo[t] for t in texts]
    return fluency


def text_nll(module, params, tok, texts: Sequence[str], max_len: int, batch_size: int = 16
             ) -> list[float]:
    """Mean per-token NLL of each text alone, −1/(T−1) Σ_{t≥2} log p(x_t | x_<t), over its first
    `max_len` tokens under the LM (no start token: the layout's `<s>` is new to a pretrained
    vocabulary, so the first token is context only); NaN for a text of fewer than 2 tokens.
    Batches group texts of similar length, padded to a multiple of 64 tokens."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    key = ("text", id(module))
    if key not in _NLL_FNS:
        def nll(params, ids, mask):
            logits = module.apply({"params": params}, ids, mask).logits[:, :-1]  # [B, W-1, V]
            logits = logits.astype(jnp.float32)  # log p = logit - logsumexp: no [B, W, V] log_softmax
            tok_lp = (jnp.take_along_axis(logits, ids[:, 1:, None], -1)[..., 0]
                      - jax.nn.logsumexp(logits, -1))  # [B, W-1]
            w = mask[:, 1:].astype(jnp.float32)
            return -(tok_lp * w).sum(-1) / jnp.maximum(w.sum(-1), 1)  # [B]
        _NLL_FNS[key] = jax.jit(nll)
    fn = _NLL_FNS[key]
    encoded = [tok.encode_text(t)[:max_len] for t in texts]
    out = np.full(len(texts), np.nan)
    order = [i for i in np.argsort([len(x) for x in encoded], kind="stable") if len(encoded[i]) > 1]
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        width = -(-max(len(encoded[i]) for i in idx) // 64) * 64  # multiples of 64: little padding
        ids = np.full((batch_size, width), tok.pad_id, np.int32)
        mask = np.zeros((batch_size, width), np.int32)
        for j, i in enumerate(idx):
            ids[j, :len(encoded[i])], mask[j, :len(encoded[i])] = encoded[i], 1
        out[idx] = np.asarray(fn(params, ids, mask))[:len(idx)]
    return [float(v) for v in out]


def headline(numbers: dict, meta: dict) -> dict:
    """summary.json: per system the headline means (with bootstrap CIs), four-fifths violation
    rates, verdict counts, and the paired change vs the original postings."""
    out = {**meta, "systems": {}}
    for name, entry in numbers["systems"].items():
        m = entry["metrics"]
        sys_out = {k: {x: m[k][x] for x in ("mean", "ci_low", "ci_high", "n")}
                   for k in HEADLINE if k in m}
        sys_out["four_fifths_violation_rate"] = entry.get("four_fifths_violation_rate", {})
        sys_out["verdict_counts"] = entry.get("verdict_counts", {})
        comp = numbers["comparisons"].get(name, {})
        sys_out["vs_original"] = {k: {x: comp[k][x] for x in ("mean_diff", "ci_low", "ci_high",
                                                                "win_rate")}
                                  for k in ("reward", "ir_female", "ir_male") if k in comp}
        out["systems"][name] = sys_out
    return out


def format_summary(summary: dict) -> str:
    tr = summary.get("trained_reward", {})
    norm = tr.get("normalize")
    lines = [f"trained reward: {tr.get('scorer')}"
             + (f", normalize={norm}" if norm and norm != "none" else "")
             + (f" ({tr['note']})" if tr.get("note") else "")
             + ("; β = 0 rows: the BC policy, trained on no reward"
                if any(v.get("scorer") == "none" for v in summary.get("trained_reward_by_system",
                                                                     {}).values()) else ""),
             f"reported reward: {summary.get('reported_reward', {}).get('scorer', 'diversity')} "
             f"(candidate pool {summary.get('reported_reward', {}).get('pool', '?')})",
             *([summary["eval_read"]["line"]] if "eval_read" in summary else []),
             f"{'system':14s} {'reward':>22s} {'IR female':>10s} {'IR male':>8s} "
             f"{'4/5 viol. (F)':>13s} {'Δreward vs original':>26s} {'finished':>8s} {'chrF':>6s}"
             f" {'SIM':>5s} {'J':>5s} {'retr.':>5s}  trained on"]
    by_system = summary.get("trained_reward_by_system", {})
    for name, s in summary["systems"].items():
        r = s.get("reward", {})
        d = s.get("vs_original", {}).get("reward")
        ff = s.get("four_fifths_violation_rate", {}).get("female", float("nan"))
        lines.append(
            f"{name:14s} {r.get('mean', float('nan')):8.3f} [{r.get('ci_low', float('nan')):6.2f},"
            f"{r.get('ci_high', float('nan')):6.2f}] "
            f"{s.get('ir_female', {}).get('mean', float('nan')):10.3f} "
            f"{s.get('ir_male', {}).get('mean', float('nan')):8.3f} {ff:13.1%} "
            + (f"{d['mean_diff']:+8.3f} [{d['ci_low']:+.2f},{d['ci_high']:+.2f}]" if d else " " * 26)
            + (f" {s['finished_share']['mean']:8.0%}" if "finished_share" in s else " " * 9)
            + (f" {s['preservation']['chrf']['mean']:6.1f}" if "chrf" in s.get("preservation", {})
               else " " * 7)
            + ("".join(f" {s['joint'][k]['mean']:5.2f}" for k in ("sim", "j", "retrieved"))
               if "joint" in s else " " * 18)
            + (f"  {reward_name(by_system[name])}" if name in by_system else ""))
    return "\n".join(lines)
