"""Token layout: text episodes -> tokens, state/action indices, rewards, terminals (numpy only).

The layout is the contract between data, losses and generation (FMs-at-work / ILQL
`DataPoint.from_obs`, reference/fms_at_work.md §1.2). An episode is a list of utterances
`(text, reward)` that alternate between the environment (`reward is None`) and the agent
(`reward` a float), plus a terminal flag:

    <s> or <a>   first token: `<s>` (bos) if the first utterance is the environment's, else `<a>` (boa)
    env text     followed by `</s>` (eos, "end of state")
    agent text   followed by `</a>` (eoa, "end of action")
    </eod>       appended when the episode is terminal

For the job task that is `<s>{prompt}</s>{response}</a></eod>`. Walking the tokens, every `</s>`
at position i sets `cur = i`; every `</a>` at position i adds positions `cur .. i-1` to both
`state_idxs` and `action_idxs` (position j "acts" by emitting token j+1, so the actions are the agent
tokens and, last, `</a>`), adds a constant token reward `c` to each of those actions and the
utterance's reward to the last one. Finally the last position (`</eod>` when terminal) is appended
as the final state, and `terminals = [0]*(S-1) + [terminal]`, so S = A + 1.

Ids are built by concatenating `tok.encode_text(piece)` and control ids; a literal `</a>` inside a
posting therefore stays text (upstream tokenized the joined string, so it became a control token).

Chat templates (instruct models). When the tokenizer renders prompts with its chat template
(`tok.use_chat_template`, on by default for a tokenizer that has one), the first environment
utterance, given as text, becomes the templated prompt `head + body + tail`
(`Tokenizer.chat_prompt_parts`: system turn, user turn holding the prompt text, assistant
header), still between `<s>` and `</s>`:

    <s>{system turn}{user turn: prompt}{assistant header}</s>{response}</a></eod>

so `</s>` is the first state and the action span is exactly the response's `encode_text` ids
plus `</a>`, as without a template; the template's own end of turn (e.g. `<|im_end|>`) is not in
the episode (decoding stops at it as well as at `</a>`: `GenerationConfig.stop_ids`). Truncation
trims the body only (the template's head and tail always stay); `Truncation.max_prompt_tokens`
counts the whole templated prompt, `min_prompt_tokens` the body. Prompts given as ids, and later
environment turns of a multi-turn episode, are used as they are.

Truncation (fixes an upstream bug): upstream cut `tokens[:max_len]`, which silently drops the final
reward and the terminal flag of every long example (prompts contain the whole original posting).
Here the PROMPT (first environment utterance) is trimmed first, keeping `<s>`/`</s>` and the end
of the prompt (`prompt_side="left"`, default: the instruction sits at the end of the job prompt)
or its start (`prompt_side="right"`). If the response alone does not fit, `on_overflow` decides:
`"truncate_response"` keeps the start of the last agent utterance and still ends it with
`</a></eod>`, so its reward sits on the last kept action; `"drop"` skips the example; `"error"`
raises `SequenceTooLongError`. Every case is counted in a `LayoutStats`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional, Protocol, Sequence, Union

import numpy as np

DEFAULT_BUCKETS: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048, 4096)

Text = Union[str, Sequence[int]]  # a string, or ids already encoded (e.g. a chat template)
Utterance = tuple[Text, Optional[float]]


class TokenizerLike(Protocol):
    """What the layout needs from `fairjax.io.tokenizer.Tokenizer`."""

    eoa_id: int
    boa_id: int
    eod_id: int
    bos_id: int
    eos_id: int
    pad_id: int

    def encode_text(self, text: str) -> list[int]: ...


class SequenceTooLongError(ValueError):
    """An episode does not fit `max_len` and the truncation policy is `on_overflow="error"`."""


@dataclass(frozen=True)
class Truncation:
    """How to fit an episode into `max_len` tokens (None: never truncate).

    prompt_side: "left" drops the start of the prompt (keeps its end), "right" keeps its start.
    on_overflow: what to do when the response alone does not fit:
        "truncate_response" | "drop" | "error".
    min_prompt_tokens: prompt tokens kept even when the response has to be truncated.
    max_prompt_tokens: cap on prompt tokens (None: only max_len limits it).
    """

    max_len: Optional[int] = None
    prompt_side: str = "left"
    on_overflow: str = "truncate_response"
    min_prompt_tokens: int = 0
    max_prompt_tokens: Optional[int] = None

    def __post_init__(self):
        if self.prompt_side not in ("left", "right"):
            raise ValueError(f"Truncation.prompt_side must be 'left' or 'right', got {self.prompt_side!r}")
        if self.on_overflow not in ("truncate_response", "drop", "error"):
            raise ValueError("Truncation.on_overflow must be 'truncate_response', 'drop' or 'error', "
                             f"got {self.on_overflow!r}")
        if self.max_len is not None and self.max_len < 8:
            raise ValueError(f"Truncation.max_len must be >= 8 tokens, got {self.max_len}")
        if self.min_prompt_tokens < 0:
            raise ValueError(f"Truncation.min_prompt_tokens must be >= 0, got {self.min_prompt_tokens}")


@dataclass
class LayoutStats:
    """Counts of what truncation did (report these: they are the examples the fix protects)."""

    total: int = 0
    prompt_trimmed: int = 0
    response_truncated: int = 0
    dropped: int = 0
    prompt_tokens_removed: int = 0
    response_tokens_removed: int = 0
    dropped_ids: list = field(default_factory=list)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def shares(self) -> dict:
        """Fractions of episodes whose prompt was trimmed / response cut / that were dropped."""
        n = max(self.total, 1)
        return {"prompt_truncated_share": self.prompt_trimmed / n,
                "response_truncated_share": self.response_truncated / n,
                "dropped_share": self.dropped / n}

    def report(self) -> str:
        return (f"layout: {self.total} episodes, prompt trimmed in {self.prompt_trimmed} "
                f"({self.prompt_tokens_removed} tokens), response truncated in {self.response_truncated} "
                f"({self.response_tokens_removed} tokens), dropped {self.dropped} (response alone too long)")


@dataclass(frozen=True)
class Episode:
    """One laid-out episode (all 1-D numpy arrays).

    tokens [T] int32; state_idxs [S] int32; action_idxs [A=S-1] int32; rewards [A] float32;
    terminals [S] int32; response_mask [T] int32 (1 where the token is an action target: agent
    tokens and their `</a>`); prompt_mask [T] int32 (1 for context tokens: everything real that is
    neither an action target nor `</eod>`); sequence_reward: sum of the utterance rewards;
    truncated: "" | "prompt" | "response" | "prompt+response".
    """

    tokens: np.ndarray
    state_idxs: np.ndarray
    action_idxs: np.ndarray
    rewards: np.ndarray
    terminals: np.ndarray
    response_mask: np.ndarray
    prompt_mask: np.ndarray
    sequence_reward: float
    truncated: str = ""

    @property
    def length(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def num_states(self) -> int:
        return int(self.state_idxs.shape[0])


@dataclass(frozen=True)
class FramedPrompt:
    """A prompt's ids inside fixed framing (a chat template): only `body` is ever trimmed."""

    head: tuple
    body: tuple
    tail: tuple

    @property
    def frame_len(self) -> int:
        return len(self.head) + len(self.tail)


def _encode(tok: TokenizerLike, text: Text) -> list[int]:
    if isinstance(text, FramedPrompt):
        return list(text.head + text.body + text.tail)
    if isinstance(text, str):
        return list(tok.encode_text(text))
    return [int(t) for t in text]


def frame_prompt(tok: TokenizerLike, prompt: Union[Text, FramedPrompt]) -> FramedPrompt:
    """The prompt as (head, body, tail) ids: the chat template's parts for text when the
    tokenizer uses one (`chat_prompt_parts`), else no framing."""
    if isinstance(prompt, FramedPrompt):
        return prompt
    if isinstance(prompt, str) and getattr(tok, "use_chat_template", False):
        head, body, tail = tok.chat_prompt_parts(prompt)
        return FramedPrompt(tuple(head), tuple(body), tuple(tail))
    return FramedPrompt((), tuple(_encode(tok, prompt)), ())


def _check_sequence(sequence: Sequence[Utterance]) -> None:
    if len(sequence) == 0:
        raise ValueError("an episode needs at least one utterance")
    for k, utt in enumerate(sequence):
        if not (isinstance(utt, tuple) and len(utt) == 2):
            raise ValueError(f"utterance {k} must be a (text, reward|None) pair, got {utt!r}")
        if utt[1] is not None and not np.isfinite(float(utt[1])):
            raise ValueError(f"utterance {k} has a non-finite reward {utt[1]!r}")
    roles = [r is None for _, r in sequence]
    for k in range(1, len(roles)):
        if roles[k] == roles[k - 1]:
            who = "environment" if roles[k] else "agent"
            raise ValueError(f"utterances {k - 1} and {k} are both {who} utterances; the layout needs "
                             "environment (reward None) and agent (float reward) turns to alternate")


def _trim(ids: list[int], keep: int, side: str) -> list[int]:
    """Keep `keep` ids: side "left" drops from the start (keeps the end), "right" keeps the start."""
    keep = max(keep, 0)
    if keep >= len(ids):
        return ids
    return ids[len(ids) - keep:] if side == "left" else ids[:keep]


def _fit(pieces: list[list[int]], is_env: list[bool], overhead: int, trunc: Truncation,
         stats: LayoutStats) -> Optional[tuple[list[list[int]], str]]:
    """Shorten `pieces` (per-utterance text ids) so that sum + overhead <= max_len.

    Returns (pieces, kind) with kind "" | "prompt" | "response", or None to drop the episode.
    """
    pieces = list(pieces)
    kind = ""
    if is_env[0]:
        cap = trunc.max_prompt_tokens
        if trunc.max_len is not None:
            excess = sum(map(len, pieces)) + overhead - trunc.max_len
            room = max(len(pieces[0]) - excess, min(trunc.min_prompt_tokens, len(pieces[0])))
            cap = room if cap is None else min(cap, room)
        if cap is not None and len(pieces[0]) > cap:
            stats.prompt_tokens_removed += len(pieces[0]) - cap
            pieces[0] = _trim(pieces[0], cap, trunc.prompt_side)
            kind = "prompt"
    if trunc.max_len is None:
        return pieces, kind
    excess = sum(map(len, pieces)) + overhead - trunc.max_len
    if excess <= 0:
        return pieces, kind
    # The response (last agent utterance) alone does not fit.
    if trunc.on_overflow == "error":
        raise SequenceTooLongError(
            f"episode of {sum(map(len, pieces)) + overhead} tokens cannot fit max_len={trunc.max_len} "
            f"even with the prompt trimmed to {len(pieces[0]) if is_env[0] else 0} tokens "
            "(on_overflow='error'; use 'truncate_response' or 'drop')")
    last_agent = max((k for k, env in enumerate(is_env) if not env), default=None)
    if trunc.on_overflow == "drop" or last_agent is None or len(pieces[last_agent]) <= excess:
        return None
    pieces[last_agent] = pieces[last_agent][: len(pieces[last_agent]) - excess]
    stats.response_tokens_removed += excess
    return pieces, "response" if not kind else "prompt+response"


def layout(tok: TokenizerLike, sequence: Sequence[Utterance], terminal: bool, *,
           token_reward: Union[float, Callable[[np.ndarray], np.ndarray]] = 0.0,
           truncation: Optional[Truncation] = None, stats: Optional[LayoutStats] = None,
           example_id: object = None) -> Optional[Episode]:
    """Lay out one episode. Returns None only when truncation drops it (`on_overflow="drop"`).

    sequence: [(text or ids, reward|None), ...] alternating env/agent turns (Observation.to_sequence).
    token_reward: constant c per action, or f(tokens[T]) -> [T-1] per-transition rewards
        (upstream ConstantTokenReward / SpecifiedTokenReward); reward of action j is f(...)[j].
    """
    _check_sequence(sequence)
    trunc = truncation or Truncation()
    stats = stats if stats is not None else LayoutStats()
    stats.total += 1
    is_env = [r is None for _, r in sequence]
    pieces = [_encode(tok, text) for text, _ in sequence]
    overhead = 1 + len(sequence) + int(bool(terminal))  # <s>/<a>, one end marker each, </eod>
    frame = None
    if is_env[0]:  # the prompt: a chat template frames it; truncation trims its body only
        frame = frame_prompt(tok, sequence[0][0])
        pieces[0] = list(frame.body)
        overhead += frame.frame_len
        if trunc.max_prompt_tokens is not None:
            trunc = dataclasses.replace(
                trunc, max_prompt_tokens=max(trunc.max_prompt_tokens - frame.frame_len, 0))
    fitted = _fit(pieces, is_env, overhead, trunc, stats)
    if fitted is None:
        stats.dropped += 1
        stats.dropped_ids.append(example_id)
        return None
    pieces, kind = fitted
    if frame is not None:
        pieces[0] = list(frame.head) + pieces[0] + list(frame.tail)
    stats.prompt_trimmed += "prompt" in kind
    stats.response_truncated += "response" in kind

    ids: list[int] = [tok.bos_id if is_env[0] else tok.boa_id]
    ends: list[int] = []  # position of each utterance's end marker
    for piece, env in zip(pieces, is_env):
        ids.extend(piece)
        ids.append(tok.eos_id if env else tok.eoa_id)
        ends.append(len(ids) - 1)
    if terminal:
        ids.append(tok.eod_id)
    tokens = np.asarray(ids, dtype=np.int32)

    if callable(token_reward):
        trans_r = np.asarray(token_reward(tokens), dtype=np.float32)
        if trans_r.shape != (len(tokens) - 1,):
            raise ValueError(f"token_reward returned shape {trans_r.shape}, expected ({len(tokens) - 1},)")
    else:
        trans_r = np.full(len(tokens) - 1, float(token_reward), dtype=np.float32)

    state_idxs: list[int] = []
    rewards: list[float] = []
    cur = 0
    for (_, r), env, end in zip(sequence, is_env, ends):
        if env:
            cur = end
            continue
        span = range(cur, end)
        state_idxs.extend(span)
        rewards.extend(float(x) for x in trans_r[cur:end])
        rewards[-1] += float(r)
    action_idxs = np.asarray(state_idxs, dtype=np.int32)
    state_arr = np.asarray(state_idxs + [len(tokens) - 1], dtype=np.int32)
    terminals = np.zeros(len(state_arr), dtype=np.int32)
    terminals[-1] = int(bool(terminal))

    response_mask = np.zeros(len(tokens), dtype=np.int32)
    response_mask[action_idxs + 1] = 1
    prompt_mask = (1 - response_mask).astype(np.int32)
    if terminal:
        prompt_mask[-1] = 0
    seq_r = float(sum(float(r) for _, r in sequence if r is not None))
    return Episode(tokens=tokens, state_idxs=state_arr, action_idxs=action_idxs,
                   rewards=np.asarray(rewards, dtype=np.float32), terminals=terminals,
                   response_mask=response_mask, prompt_mask=prompt_mask, sequence_reward=seq_r,
                   truncated=kind)


def layout_example(tok: TokenizerLike, prompt: Text, response: Text, reward: float, **kwargs
                   ) -> Optional[Episode]:
    """Single-turn `<s>{prompt}</s>{response}</a></eod>` (the job-rewrite episode)."""
    return layout(tok, [(prompt, None), (response, float(reward))], True, **kwargs)


def prompt_tokens(tok: TokenizerLike, prompt: Text, max_len: Optional[int] = None,
                  prompt_side: str = "left") -> np.ndarray:
    """`<s>{prompt}</s>` ids [T] int32 for generation (not terminal: no `</eod>`); with a chat
    template `<s>{head}{prompt}{tail}</s>`, as the episodes are laid out (module docstring).

    With `max_len`, the prompt text is trimmed (its start dropped for "left") so T <= max_len.
    """
    frame = frame_prompt(tok, prompt)
    ids = list(frame.body)
    if max_len is not None:
        if max_len < 2 + frame.frame_len:
            raise ValueError(f"prompt max_len must be >= {2 + frame.frame_len} (<s>, </s>"
                             + (f" and {frame.frame_len} chat-template tokens" if frame.frame_len
                                else "") + f"), got {max_len}")
        ids = _trim(ids, max_len - 2 - frame.frame_len, prompt_side)
    ids = list(frame.head) + ids + list(frame.tail)
    return np.asarray([tok.bos_id] + ids + [tok.eos_id], dtype=np.int32)


def bucket_for(n: int, buckets: Optional[Sequence[int]]) -> int:
    """Smallest bucket >= n (buckets None: n itself). Raises if n exceeds the largest bucket."""
    if not buckets:
        return int(n)
    for b in sorted(buckets):
        if n <= b:
            return int(b)
    raise ValueError(f"length {n} exceeds the largest bucket {max(buckets)}; add a bucket or "
                     "set a truncation max_len <= the largest bucket")


def _pad_rows(rows: Sequence[np.ndarray], width: int, value, dtype) -> np.ndarray:
    out = np.full((len(rows), width), value, dtype=dtype)
    for i, r in enumerate(rows):
        if len(r) > width:
            raise ValueError(f"row {i} has length {len(r)} > padded width {width}")
        out[i, : len(r)] = r
    return out


def collate(episodes: Sequence[Episode], pad_id: int, *, pad_to: Optional[int] = None,
            state_pad_to: Optional[int] = None, buckets: Optional[Sequence[int]] = None,
            extras: bool = False, batch_size: Optional[int] = None) -> dict[str, np.ndarray]:
    """Pad episodes into a batch with exactly the upstream collate keys and pad values.

    tokens [B,T] int32 (pad `pad_id`), attn_mask [B,T] float32 (= tokens != pad), state_idxs [B,S]
    int32 (pad 0), action_idxs [B,S-1] int32 (pad 0), rewards [B,S-1] float32 (pad 0.0),
    terminals [B,S] int32 (pad 1). T/S are the batch maxima, or `pad_to`/`state_pad_to`, or the
    bucket (`bucket_for`) of the maxima. `extras=True` adds prompt_mask/response_mask [B,T] float32
    and sequence_reward [B] float32. `batch_size` > len(episodes) appends padding rows (all pad,
    terminals 1) which every loss ignores.
    """
    if len(episodes) == 0:
        raise ValueError("collate needs at least one episode")
    T = pad_to or bucket_for(max(e.length for e in episodes), buckets)
    S = state_pad_to or bucket_for(max(e.num_states for e in episodes), buckets)
    rows = list(episodes)
    n_fill = 0 if batch_size is None else batch_size - len(rows)
    if n_fill < 0:
        raise ValueError(f"{len(rows)} episodes exceed batch_size={batch_size}")
    empty = np.zeros(0, np.int32)
    cols = lambda name: [getattr(e, name) for e in rows] + [empty] * n_fill  # noqa: E731
    tokens = _pad_rows(cols("tokens"), T, pad_id, np.int32)
    batch = {
        "tokens": tokens,
        "attn_mask": (tokens != pad_id).astype(np.float32),
        "state_idxs": _pad_rows(cols("state_idxs"), S, 0, np.int32),
        "action_idxs": _pad_rows(cols("action_idxs"), S - 1, 0, np.int32),
        "rewards": _pad_rows(cols("rewards"), S - 1, 0.0, np.float32),
        "terminals": _pad_rows(cols("terminals"), S, 1, np.int32),
    }
    if extras:
        batch["prompt_mask"] = _pad_rows(cols("prompt_mask"), T, 0, np.float32)
        batch["response_mask"] = _pad_rows(cols("response_mask"), T, 0, np.float32)
        batch["sequence_reward"] = np.asarray([e.sequence_reward for e in rows] + [0.0] * n_fill,
                                              dtype=np.float32)
    return batch


def layout_pair(tok: TokenizerLike, prompt: Text, chosen: Text, rejected: Text, *,
                truncation: Optional[Truncation] = None, stats: Optional[LayoutStats] = None,
                example_id: object = None) -> Optional[tuple[Episode, Episode]]:
    """Chosen/rejected episodes sharing the SAME (possibly trimmed) prompt, for DPO-style losses.

    The prompt budget is set by the longer response, so both rows condition on identical context.
    Rewards are 0 (preference data carries none). Returns None if the policy drops the pair.
    """
    trunc = truncation or Truncation()
    p_ids = frame_prompt(tok, prompt)  # the same (templated) prompt for both rows
    c_ids, r_ids = _encode(tok, chosen), _encode(tok, rejected)
    if trunc.max_len is not None:
        budget = trunc.max_len - 4 - max(len(c_ids), len(r_ids))
        cap = budget if trunc.max_prompt_tokens is None else min(budget, trunc.max_prompt_tokens)
        trunc = dataclasses.replace(trunc, max_prompt_tokens=max(cap, trunc.min_prompt_tokens))
    st = stats if stats is not None else LayoutStats()
    out = []
    for resp in (c_ids, r_ids):
        ep = layout(tok, [(p_ids, None), (resp, 0.0)], True, truncation=trunc, stats=st,
                    example_id=example_id)
        if ep is None:
            return None
        out.append(ep)
    return out[0], out[1]


def collate_pairs(pairs: Sequence[tuple[Episode, Episode]], pad_id: int, *,
                  buckets: Optional[Sequence[int]] = None, pad_to: Optional[int] = None
                  ) -> dict[str, np.ndarray]:
    """DPO batch: `chosen_*` and `rejected_*` copies of the collate keys (+ prompt/response masks),
    both padded to the same T and S so they can be concatenated along the batch axis.

    chosen_response_mask [B,T] marks the response tokens (and `</a>`) whose log-probs are summed.
    """
    chosen = [c for c, _ in pairs]
    rejected = [r for _, r in pairs]
    T = pad_to or bucket_for(max(e.length for e in chosen + rejected), buckets)
    S = bucket_for(max(e.num_states for e in chosen + rejected), buckets)
    out: dict[str, np.ndarray] = {}
    for prefix, eps in (("chosen_", chosen), ("rejected_", rejected)):
        b = collate(eps, pad_id, pad_to=T, state_pad_to=S, extras=True)
        out.update({prefix + k: v for k, v in b.items()})
    return out


def episode_lengths(episodes: Iterable[Episode]) -> np.ndarray:
    """[N, 2] int64 array of (tokens, states) per episode, for length-aware batching."""
    return np.asarray([(e.length, e.num_states) for e in episodes], dtype=np.int64).reshape(-1, 2)
