"""Sequence packing: several laid-out episodes in one row of `max_len` tokens (numpy only).

Short postings leave most of a padded row empty. `pack(episodes, max_len)` puts whole episodes
into rows greedily (first fit, longest first) and returns `PackedRow`s that `collate_packed`
pads into a batch with exactly the layout contract's keys (`fairjax.data.layout.collate`) plus

    segment_ids [B, T] int32   1..k for the k episodes of a row, 0 = padding
    positions   [B, T] int32   0.. restarting at every episode's first token

The contract's index arrays are concatenated with each episode's token offset, so every
objective reads the values it reads unpacked. For a row holding episodes e_1..e_k (S_i states,
A_i = S_i − 1 actions, o_i = token offset):

    state_idxs  = [s(e_1) + o_1, ..., s(e_k) + o_k]                          S = Σ S_i
    terminals   = [term(e_1), ..., term(e_k)]                                 S
    action_idxs = [a(e_1) + o_1, f_1, a(e_2) + o_2, f_2, ..., a(e_k) + o_k]   A = S − 1
    rewards     = [r(e_1), 0, r(e_2), 0, ..., r(e_k)]                         A

f_i (the position of e_i's final state) is a filler action slot: action slot t pairs state t
with state t+1, and the slot after an episode's last action sits at that episode's terminal state,
so the losses' mask m_t = 1 − terminals_t (layout.py: the same rule that masks padding) drops
it, and the Bellman target of e_i's last action reads V(final state of e_i)·(1 − 1), never e_{i+1}.
Episodes must therefore be terminal (the job task's always are); a non-terminal one is refused.
Next-token targets that cross an episode boundary (e_i's last token -> e_{i+1}'s `<s>`) are
excluded by the agents (`fairjax.agents.base.loss_view`), and the models mask attention per segment
(`fairjax.models.common.attention_mask_and_positions(segment_ids=)`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from fairjax.data.layout import Episode, collate


@dataclass(frozen=True)
class PackedRow(Episode):
    """Episodes packed into one row: an `Episode` over the whole row (tokens, response_mask,
    prompt_mask [L]; state_idxs, terminals [S]; action_idxs, rewards [S-1]; sequence_reward = the
    episodes' sum) plus segment_ids, positions [L] and `episodes`, the packed episodes' indices."""

    segment_ids: np.ndarray = None
    positions: np.ndarray = None
    episodes: tuple = ()


def assign_rows(lengths: Sequence[int], max_len: int) -> list[list[int]]:
    """First-fit decreasing: indices of `lengths` grouped into rows of total length <= max_len.

    Longest first (ties in input order), each into the first row with room; rows are returned
    in creation order, each listing its episodes in input order. Raises if one is > max_len.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    too_long = np.flatnonzero(lengths > max_len)
    if too_long.size:
        raise ValueError(f"episode {int(too_long[0])} has {int(lengths[too_long[0]])} tokens > "
                         f"max_len={max_len}; lay episodes out with Truncation(max_len) first")
    room = np.zeros(0, np.int64)  # free tokens per row
    rows: list[list[int]] = []
    for i in np.argsort(-lengths, kind="stable"):
        fits = np.flatnonzero(room >= lengths[i])
        if fits.size:
            r = int(fits[0])
        else:
            r = len(rows)
            rows.append([])
            room = np.append(room, max_len)
        rows[r].append(int(i))
        room[r] -= lengths[i]
    return [sorted(r) for r in rows]


def pack_row(episodes: Sequence[Episode], ids: Sequence[int] = ()) -> PackedRow:
    """Concatenate terminal `episodes` into one `PackedRow` (module docstring for the indices)."""
    cat = lambda parts, dt: np.concatenate(parts).astype(dt) if parts else np.zeros(0, dt)  # noqa: E731
    toks, seg, pos, states, terms, acts, rews, resp, prm = ([] for _ in range(9))
    off = 0
    for k, e in enumerate(episodes):
        if int(e.terminals[-1]) != 1:
            raise ValueError(f"episode {ids[k] if ids else k} is not terminal: a packed row needs "
                             "every episode to end in a terminal state (set data.pack=False)")
        toks.append(e.tokens)
        seg.append(np.full(e.length, k + 1))
        pos.append(np.arange(e.length))
        states.append(e.state_idxs + off)
        terms.append(e.terminals)
        acts.append(e.action_idxs + off)
        rews.append(e.rewards)
        if k + 1 < len(episodes):  # filler slot at this episode's terminal state (masked)
            acts.append([e.state_idxs[-1] + off])
            rews.append([0.0])
        resp.append(e.response_mask)
        prm.append(e.prompt_mask)
        off += e.length
    return PackedRow(tokens=cat(toks, np.int32), segment_ids=cat(seg, np.int32),
                     positions=cat(pos, np.int32), state_idxs=cat(states, np.int32),
                     action_idxs=cat(acts, np.int32), rewards=cat(rews, np.float32),
                     terminals=cat(terms, np.int32), response_mask=cat(resp, np.int32),
                     prompt_mask=cat(prm, np.int32), episodes=tuple(ids),
                     sequence_reward=float(sum(e.sequence_reward for e in episodes)))


def pack(episodes: Sequence[Episode], max_len: int) -> list[PackedRow]:
    """Whole episodes greedily packed into rows of at most `max_len` tokens (`assign_rows`)."""
    rows = assign_rows([e.length for e in episodes], max_len)
    return [pack_row([episodes[i] for i in r], r) for r in rows]


_EMPTY = pack_row([])


def fill_ratio(rows: Sequence, width: int) -> float:
    """Real tokens / (rows × width): how full rows padded to `width` are."""
    return float(sum(r.length for r in rows)) / max(len(rows) * width, 1)


def collate_packed(rows: Sequence[PackedRow], pad_id: int, *, pad_to: Optional[int] = None,
                   state_pad_to: Optional[int] = None, batch_size: Optional[int] = None,
                   extras: bool = False) -> dict[str, np.ndarray]:
    """`layout.collate` of packed rows (same keys and pad values) + segment_ids / positions
    [B, T] int32 (pad 0). Padding rows (`batch_size` > len(rows)) are all padding."""
    if extras:
        raise ValueError("collate_packed: packed rows carry no per-episode extras "
                         "(sequence_reward); objectives that need them cannot pack")
    rows = list(rows) or [_EMPTY]  # this process's rows of a short final batch are all padding
    batch = collate(rows, pad_id, pad_to=pad_to, state_pad_to=state_pad_to, batch_size=batch_size)
    t = batch["tokens"].shape[1]
    for key in ("segment_ids", "positions"):
        out = np.zeros((batch["tokens"].shape[0], t), np.int32)
        for i, r in enumerate(rows):
            out[i, :r.length] = getattr(r, key)
        batch[key] = out
    return batch
