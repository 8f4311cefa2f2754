"""Upstream ILQL's own decoding loop as a benchmark peer: `IQL_Policy.sample_raw` from a local
checkout of Sea-Snell/Implicit-Language-Q-Learning (`--upstream_src=DIR`, DIR = the repository
root or its `src/`), run in this process on the shapes `benchmarks/generate` times fairjax on.

The upstream code targets transformers 4.x. Running it under the installed transformers needs a
few names that have since moved or gone; `install_compat()` provides exactly those, and only
where they are missing:
* `transformers.modeling_utils.Conv1D` (now in `transformers.pytorch_utils`), the head-pruning
  helpers `find_pruneable_heads_and_indices` / `prune_conv1d_layer` (taken from there where they
  still exist, else raising if called: sample_raw never prunes) and `SequenceSummary` (imported,
  unused by GPT-2's LM);
* `transformers.file_utils` (docstring decorators and `ModelOutput`) and
  `transformers.utils.model_parallel_utils` (imported for `parallelize`, never called here);
* `PreTrainedModel.get_head_mask` for `head_mask=None` (the only value sample_raw passes);
* `wandb`, imported at module level for training logs, as an empty module when not installed.
Upstream's GPT-2 copy (`models/gpt2_optional_final_ln.py`) and its legacy tuple
`past_key_values` run as written: nothing of the decoding loop is replaced.

The model is built as upstream's configs build it for this task: `PerTokenIQL` on a GPT-2 of the
preset's shape with `double_q`, `seperate_policy` and `seperate_target` (three transformers with
their own KV caches, Q, Q2, V, target-Q heads), random weights. Sampling: `exp_adv=True` (the
β·(Q̂ − V) perturbation fairjax's bench uses, same β), temperature 1, no top-k/top-p, a
termination condition that never fires, so every row makes exactly N new tokens. The dataset's
`max_len` is prompt + N, the tightest KV padding upstream allows (its loop pads every cache to
`max_len` and slices it each step).
"""
from __future__ import annotations

import importlib
import os
import sys
import time
import types

IQL_MODULE = os.path.join("models", "iql_model.py")


def source_root(path: str) -> str:
    """The directory holding upstream's `models/iql_model.py` (DIR or DIR/src)."""
    for root in (path, os.path.join(path, "src")):
        if os.path.isfile(os.path.join(root, IQL_MODULE)):
            return os.path.abspath(root)
    raise FileNotFoundError(f"--upstream_src={path}: no {IQL_MODULE} under it or its src/ (expected "
                            "a checkout of Sea-Snell/Implicit-Language-Q-Learning)")


def install_compat() -> list[str]:
    """Provide the transformers-4.x names upstream imports, where missing; returns what it added."""
    import torch
    import transformers.pytorch_utils as pu
    import transformers.utils as tu
    from transformers import modeling_utils as mu

    added = []

    def put(obj, name, value):
        if not hasattr(obj, name):
            setattr(obj, name, value)
            added.append(f"{getattr(obj, '__name__', obj)}.{name}")

    def unsupported(name):
        def call(*_a, **_k):
            raise NotImplementedError(f"upstream_ilql compat: {name} (head pruning) is not provided")
        return call

    for name in ("Conv1D", "find_pruneable_heads_and_indices", "prune_conv1d_layer"):
        put(mu, name, getattr(pu, name, None) or unsupported(name))
    put(mu, "SequenceSummary", torch.nn.Module)

    def get_head_mask(self, head_mask, num_layers, is_attention_chunked=False):
        if head_mask is not None:
            raise NotImplementedError("upstream_ilql compat: only head_mask=None is supported")
        return [None] * num_layers

    put(mu.PreTrainedModel, "get_head_mask", get_head_mask)

    def keep(*_a, **_k):
        return lambda f: f

    modules = {
        "transformers.file_utils": dict(ModelOutput=tu.ModelOutput,
                                        add_code_sample_docstrings=keep,
                                        add_start_docstrings=keep,
                                        add_start_docstrings_to_model_forward=keep,
                                        replace_return_docstrings=keep),
        "transformers.utils.model_parallel_utils": dict(assert_device_map=lambda *a: None,
                                                        get_device_map=lambda *a: None),
        "wandb": {},
    }
    for name, attrs in modules.items():
        try:
            importlib.import_module(name)
        except ImportError:
            mod = types.ModuleType(name)
            mod.__dict__.update(attrs)
            sys.modules[name] = mod
            added.append(name)
    return added


def load(src: str):
    """(GPT2LMHeadModel, PerTokenIQL, IQL_Policy) from upstream's source tree."""
    root = source_root(src)
    install_compat()
    if root not in sys.path:
        sys.path.insert(0, root)
    gpt2 = importlib.import_module("models.gpt2_optional_final_ln")
    iql = importlib.import_module("models.iql_model")
    return gpt2.GPT2LMHeadModel, iql.PerTokenIQL, iql.IQL_Policy


def upstream_generate(src: str, mcfg, batch: int, prompt: int, new: int, steps: int,
                      adv_weight: float) -> dict:
    """New tokens/s of upstream `IQL_Policy.sample_raw` on B random prompts x N new tokens."""
    import torch
    from transformers import GPT2Config

    gpt2_lm, per_token_iql, iql_policy = load(src)
    vocab = mcfg.vocab_size

    class Tokenizer:  # the members sample_raw reads
        pad_token_id, eoa_token_id = vocab - 1, vocab - 2

        def num_tokens(self):
            return vocab

        def decode(self, ids, clean_up_tokenization_spaces=False):
            return " ".join(map(str, ids))

        def id_to_token(self, i):
            return f"<{i}>"

    class Dataset:
        tokenizer, max_len = Tokenizer(), prompt + new

    torch.manual_seed(0)
    model = gpt2_lm(GPT2Config.from_dict(mcfg.to_hf()))
    agent = per_token_iql(model, Dataset(), device="cpu", double_q=True, seperate_policy=True,
                          seperate_target=True).eval()
    policy = iql_policy(agent, "sample")
    tokens = torch.randint(0, vocab - 7, (batch, prompt))
    mask, idx = torch.ones(batch, prompt), torch.zeros(batch, 1, dtype=torch.long)

    @torch.no_grad()
    def run(n) -> int:
        """New tokens sample_raw returned (its outputs, decoded as space-separated ids)."""
        pairs, _, _ = policy.sample_raw(tokens, mask, idx, idx, lambda _s: False,
                                        max_generation_len=n, exp_adv=True,
                                        adv_weight=adv_weight, include_adv=True)
        return sum(len(text.split()) for _, outs in pairs for text in outs)

    run(2)  # warm up (allocator, threads) on a short generation
    t = time.perf_counter()
    made = sum(run(new) for _ in range(steps))
    dt = (time.perf_counter() - t) / steps
    return {"s_per_batch": dt, "new_tokens": made // steps, "new_tokens_per_s": made / steps / dt}
