"""FMs-at-work / ILQL checkpoint formats (numpy state dicts; no torch, no jax at import).

Formats (reference/fms_at_work.md §3), recognised by `detect_format`:
  "bc"        BC_LM `model.pkl`: the HF GPT2LMHeadModel state dict prefixed `model.`
              (`model.transformer.*`, `model.lm_head.weight`).
  "converted" `scripts/data/convert_bc.py` output `model_converted.pkl`: the same with `lm_policy.`.
  "iql"       PerTokenIQL `model.pkl`: trunks `model.*` (Q/V), `lm_target.*`, `lm_policy.*`,
              `pi.weight` (policy head, tied to `lm_policy`'s wte) and MLP heads `v`, `q`, `q2`,
              `target_q`, `target_q2` (`.0` = Linear(d, 2d), `.2` = Linear(2d, out), torch [out, in]).
  "hf"        a bare HF GPT2LMHeadModel / LlamaForCausalLM state dict (`transformer.*` / `model.layers.*`).
Checkpoints saved with the vendored transformers-4.16 GPT-2 carry `h.{i}.attn.bias` (uint8 causal
mask) and `h.{i}.attn.masked_bias` (-1e4) buffers: `split_upstream` drops them, the writers add them
back (`with_buffers=True`) so upstream's `load_state_dict(strict=True)` accepts our exports.
"""
from __future__ import annotations

import dataclasses
import re
import warnings
from typing import Any, Mapping, Optional

import numpy as np

from fairjax.errors import CheckpointMismatchError
from fairjax.models import gpt2

TRUNKS = ("model", "lm_target", "lm_policy")  # upstream attribute names, state-dict order
HEADS = ("v", "q", "q2", "target_q", "target_q2")
_BUFFER = re.compile(r"(^|\.)h\.\d+\.attn\.(bias|masked_bias)$")
_HEAD_KEY = re.compile(r"^(v|q|q2|target_q|target_q2)\.(0|2)\.(weight|bias)$")

StateDict = dict[str, np.ndarray]


@dataclasses.dataclass
class UpstreamCheckpoint:
    """The parts of an upstream checkpoint, each trunk an HF GPT2LMHeadModel state dict
    (`transformer.*`, `lm_head.weight`; buffers dropped).

    policy: the policy LM (BC model, converted `lm_policy`, IQL `lm_policy`) or None.
    qv:     IQL Q/V trunk (`model.*`) or None; target: IQL target trunk (`lm_target.*`) or None.
    heads:  {'v'|'q'|'q2'|'target_q'|'target_q2': {'0.weight', '0.bias', '2.weight', '2.bias'}}
            (torch Linear layout [out, in]) or None.
    format: detect_format's answer; notes: human-readable findings (e.g. untied heads).
    Also readable like a dict by upstream group name (`parts['model']`, `parts.get('q')`).
    """

    format: str
    policy: Optional[StateDict] = None
    qv: Optional[StateDict] = None
    target: Optional[StateDict] = None
    heads: Optional[dict[str, StateDict]] = None
    notes: list = dataclasses.field(default_factory=list)

    _ALIASES = {"model": "qv", "lm_policy": "policy", "lm_target": "target"}

    def get(self, name: str, default=None):
        if name in self._ALIASES:
            value = getattr(self, self._ALIASES[name])
        elif name in ("policy", "qv", "target", "heads"):
            value = getattr(self, name)
        else:
            value = (self.heads or {}).get(name)
        return default if value is None else value

    def __getitem__(self, name: str):
        value = self.get(name)
        if value is None:
            raise KeyError(f"upstream {self.format} checkpoint has no part {name!r}")
        return value

    def __contains__(self, name: str) -> bool:
        return self.get(name) is not None


def _prefixes(sd: Mapping[str, Any]) -> list[str]:
    return sorted({k.split(".", 1)[0] for k in sd})


def detect_format(state_dict: Mapping[str, Any]) -> str:
    """'bc' | 'converted' | 'iql' | 'hf' (see module docstring); ValueError otherwise."""
    keys = list(state_dict)
    has = lambda p: any(k.startswith(p) for k in keys)  # noqa: E731
    if has("lm_target.") or has("pi.") or any(_HEAD_KEY.match(k) for k in keys):
        return "iql"
    if has("model.transformer."):
        return "bc"
    if has("lm_policy.transformer."):
        return "converted"
    if has("transformer.") or has("model.layers.") or has("model.embed_tokens."):
        return "hf"
    raise ValueError("unrecognised checkpoint: expected FMs-at-work BC (model.transformer.*), "
                     "converted (lm_policy.*), PerTokenIQL (model.*, lm_target.*, q.*, ...) or a HF "
                     f"state dict; top-level prefixes found: {_prefixes(state_dict)}")


def _strip(sd: Mapping[str, np.ndarray], prefix: str) -> StateDict:
    n = len(prefix)
    return {k[n:]: v for k, v in sd.items() if k.startswith(prefix) and not _BUFFER.search(k[n:])}


def _check_tied(sd: StateDict, name: str, notes: list) -> None:
    head, wte = sd.get("lm_head.weight"), sd.get("transformer.wte.weight")
    if head is None or wte is None:
        return
    if head.shape != wte.shape or not np.array_equal(head, wte):
        notes.append(f"{name}: lm_head.weight differs from transformer.wte.weight (untied head; "
                     "load it with tie_word_embeddings=false)")


def split_upstream(state_dict: Mapping[str, np.ndarray], source: str = "checkpoint"
                   ) -> UpstreamCheckpoint:
    """Split an upstream state dict into HF-named trunks and torch-layout heads.

    Raises CheckpointMismatchError for keys that belong to no known group, for an IQL checkpoint
    without its `model.*` trunk, or when `pi.weight` differs from `lm_policy.lm_head.weight`
    (upstream's pi IS that module). Untied lm_heads are reported in `.notes` (and warned).
    """
    fmt = detect_format(state_dict)
    notes: list[str] = []
    out = UpstreamCheckpoint(format=fmt, notes=notes)
    if fmt == "hf":
        out.policy = {k: v for k, v in state_dict.items() if not _BUFFER.search(k)}
    elif fmt in ("bc", "converted"):
        prefix = "model." if fmt == "bc" else "lm_policy."
        unexpected = sorted(k for k in state_dict if not k.startswith(prefix))
        if unexpected:
            raise CheckpointMismatchError(unexpected=unexpected, source=source,
                                          note=f"a {fmt} checkpoint has only {prefix}* keys")
        out.policy = _strip(state_dict, prefix)
    else:
        known = tuple(t + "." for t in TRUNKS)
        unexpected = sorted(k for k in state_dict if not (k.startswith(known) or k == "pi.weight"
                                                          or _HEAD_KEY.match(k)))
        missing = [] if any(k.startswith("model.") for k in state_dict) else ["model.*"]
        if unexpected or missing:
            raise CheckpointMismatchError(missing=missing, unexpected=unexpected, source=source,
                                          note="PerTokenIQL checkpoints hold model.*, lm_target.*, "
                                               "lm_policy.*, pi.weight and v/q/q2/target_q/target_q2 heads")
        parts = {t: _strip(state_dict, t + ".") or None for t in TRUNKS}
        out.qv, out.target, out.policy = parts["model"], parts["lm_target"], parts["lm_policy"]
        heads: dict[str, StateDict] = {}
        for k, v in state_dict.items():
            m = _HEAD_KEY.match(k)
            if m:
                heads.setdefault(m[1], {})[f"{m[2]}.{m[3]}"] = v
        out.heads = heads or None
        pi = state_dict.get("pi.weight")
        policy = out.policy if out.policy is not None else out.qv  # seperate_policy=False: pi on qv
        if pi is not None and "lm_head.weight" in policy:
            if pi.shape != policy["lm_head.weight"].shape or not np.array_equal(
                    pi, policy["lm_head.weight"]):
                raise CheckpointMismatchError(
                    mismatched={"pi.weight": (policy["lm_head.weight"].shape, pi.shape)}
                    if pi.shape != policy["lm_head.weight"].shape else {},
                    unexpected=["pi.weight"], source=source,
                    note="pi.weight differs from the policy trunk's lm_head.weight; upstream's pi "
                         "is that very module, so this checkpoint was not saved by PerTokenIQL")
    for name in ("policy", "qv", "target"):
        if getattr(out, name) is not None:
            _check_tied(getattr(out, name), name, notes)
    for note in notes:
        warnings.warn(f"{source}: {note}", stacklevel=2)
    return out


def bc_to_converted(state_dict: Mapping[str, np.ndarray]) -> StateDict:
    """Upstream `scripts/data/convert_bc.py`: every key that starts with 'model' and contains
    'model.' is renamed 'lm_policy' + key[len('model'):]; other keys are kept."""
    out: StateDict = {}
    for k, v in state_dict.items():
        if k.startswith("model") and "model." in k:
            out["lm_policy" + k[len("model"):]] = v
        else:
            out[k] = v
    return out


# ----------------------------------------------------------------------------- writers
def _gpt2_sizes(sd: Mapping[str, np.ndarray]) -> tuple[int, int]:
    layers = {int(m[1]) for k in sd if (m := re.match(r"transformer\.h\.(\d+)\.", k))}
    if "transformer.wpe.weight" not in sd or not layers:
        raise CheckpointMismatchError(missing=["transformer.wpe.weight", "transformer.h.*"],
                                      source="GPT-2 state dict",
                                      note="upstream formats exist for GPT-2 trunks only")
    return max(layers) + 1, int(sd["transformer.wpe.weight"].shape[0])


def upstream_trunk(hf_sd: Mapping[str, np.ndarray], with_buffers: bool = True) -> StateDict:
    """HF GPT2LMHeadModel state dict -> the vendored fork's module order, with `lm_head.weight`
    (the same array as wte: torch writes it as one shared storage) and, if `with_buffers`,
    the 4.16 `attn.bias` (uint8 [1,1,P,P] lower-triangular) / `attn.masked_bias` (-1e4) buffers."""
    sd = {k: v for k, v in hf_sd.items() if not _BUFFER.search(k)}
    n_layer, n_pos = _gpt2_sizes(sd)
    causal = np.tril(np.ones((n_pos, n_pos), np.uint8))[None, None]
    masked = np.asarray(-1e4, np.float32)
    order = ["transformer.wte.weight", "transformer.wpe.weight"]
    for i in range(n_layer):
        p = f"transformer.h.{i}."
        order += [p + "ln_1.weight", p + "ln_1.bias"]
        if with_buffers:
            order += [p + "attn.bias", p + "attn.masked_bias"]
        for sub in ("attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj"):
            order += [f"{p}{sub}.weight", f"{p}{sub}.bias"]
    order += ["transformer.ln_f.weight", "transformer.ln_f.bias", "lm_head.weight"]
    sd.setdefault("lm_head.weight", sd.get("transformer.wte.weight"))
    out: StateDict = {}
    for k in order:
        buffer = _BUFFER.search(k)
        if buffer:
            out[k] = causal if buffer[2] == "bias" else masked
        elif sd.get(k) is None:
            raise CheckpointMismatchError(missing=[k], source="GPT-2 state dict")
        else:
            out[k] = sd[k]
    extra = sorted(set(sd) - set(order))
    if extra:
        raise CheckpointMismatchError(unexpected=extra, source="GPT-2 state dict")
    return out


def to_upstream_bc(hf_sd: Mapping[str, np.ndarray], with_buffers: bool = True) -> StateDict:
    """HF GPT-2 state dict -> BC_LM `model.pkl` state dict (`model.` prefix)."""
    return {"model." + k: v for k, v in upstream_trunk(hf_sd, with_buffers).items()}


def to_upstream_iql(policy: Mapping[str, np.ndarray], qv: Mapping[str, np.ndarray],
                    target: Optional[Mapping[str, np.ndarray]], heads: Mapping[str, Mapping],
                    with_buffers: bool = True) -> StateDict:
    """Parts -> PerTokenIQL `model.pkl` state dict, in upstream order (model, v, q, q2,
    target_q, target_q2, lm_target, lm_policy, pi). `target` defaults to a copy of `qv`;
    `pi.weight` is the policy's lm_head (same array, so it stays tied when saved)."""
    out: StateDict = {}
    out.update({"model." + k: v for k, v in upstream_trunk(qv, with_buffers).items()})
    for name in HEADS:
        if name in heads:
            out.update({f"{name}.{k}": v for k, v in heads[name].items()})
    tgt = upstream_trunk(target if target is not None else qv, with_buffers)
    out.update({"lm_target." + k: v for k, v in tgt.items()})
    pol = upstream_trunk(policy, with_buffers)
    out.update({"lm_policy." + k: v for k, v in pol.items()})
    out["pi.weight"] = pol["lm_head.weight"]
    return out


def params_to_upstream_bc(params, config, with_buffers: bool = True) -> StateDict:
    """fairjax GPT-2 LM params -> BC_LM state dict (save with `torch_pickle.save_torch_pickle`)."""
    if config.kind != "gpt2":
        raise ValueError(f"upstream BC checkpoints are GPT-2 only; got a {config.kind} model")
    return to_upstream_bc(gpt2.params_to_hf(params, config), with_buffers)
