"""Task API: plug any text task into the layout, batching and trainer (FMs-at-work "Creating your
own tasks", in Protocols and dataclasses).

A task provides
* an `Observation`: `to_sequence() -> (list of (text, reward|None), terminal)`; environment turns
  have reward None, agent turns a float (see `fairjax.data.layout`);
* a dataset of observations: a `ListDataset` (len + getitem, random access) or an
  `IterableDataset` (iter only);
* optionally an `Environment` (`reset() -> obs`, `step(action) -> (obs, reward, done)`,
  `is_terminal()`) to score generations online.

`EpisodeDataset` turns any `ListDataset` of observations into laid-out `Episode`s (lazily, cached),
which `fairjax.data.batching.BatchIterator` batches. `JobRewriteTask` is the job-description task.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Optional, Protocol, Sequence, runtime_checkable

import numpy as np

from fairjax.data.jobs import JobExample, JobsDataset
from fairjax.data.layout import (Episode, LayoutStats, TokenizerLike, Truncation, episode_lengths,
                                 layout, prompt_tokens)

Sequence_ = list[tuple[str, Optional[float]]]


def parse_task_spec(spec: str) -> tuple[str, str]:
    """`"package.module:factory"` (`data.task`: the factory of a custom task's list dataset) ->
    (module, attribute); ValueError naming the expected form otherwise. Nothing is imported."""
    mod_name, sep, attr = str(spec).partition(":")
    if not sep or not mod_name or not attr:
        raise ValueError(f"{spec!r}: expected 'module:factory', e.g. 'my_pkg.tasks:make_dataset'")
    return mod_name, attr


@runtime_checkable
class Observation(Protocol):
    def to_sequence(self) -> tuple[Sequence_, bool]: ...


@runtime_checkable
class Environment(Protocol):
    def reset(self) -> Observation: ...

    def step(self, action: str) -> tuple[Observation, float, bool]: ...

    def is_terminal(self) -> bool: ...


@runtime_checkable
class ListDataset(Protocol):
    def __len__(self) -> int: ...

    def __getitem__(self, i: int): ...


@runtime_checkable
class IterableDataset(Protocol):
    def __iter__(self) -> Iterator: ...


@dataclass(frozen=True)
class TextObservation:
    """A generic multi-turn observation: utterances (text, reward|None) and a terminal flag."""

    utterances: tuple[tuple[str, Optional[float]], ...]
    terminal: bool = True

    def to_sequence(self) -> tuple[Sequence_, bool]:
        return list(self.utterances), self.terminal


@dataclass(frozen=True)
class JobObservation:
    """FMs-at-work HackernewsObservation: `[(prompt, None), (response, reward)], True`, or
    `[(prompt, None)], False` before the agent has answered."""

    prompt: str
    response: Optional[str] = None
    reward: Optional[float] = None

    def to_sequence(self) -> tuple[Sequence_, bool]:
        if self.response is None:
            return [(self.prompt, None)], False
        if self.reward is None:
            raise ValueError("a JobObservation with a response needs a reward (precompute rewards or "
                             "set JobRewriteTask(default_reward=...))")
        return [(self.prompt, None), (self.response, float(self.reward))], True

    def __str__(self) -> str:
        return f"parent: {self.prompt}\ncomment: {self.response or ''}"


def to_episode(tok: TokenizerLike, obs: Observation, **layout_kwargs) -> Optional[Episode]:
    """`layout(tok, *obs.to_sequence(), ...)`."""
    seq, terminal = obs.to_sequence()
    return layout(tok, seq, terminal, **layout_kwargs)


class EpisodeDataset:
    """A list dataset of laid-out `Episode`s over a `ListDataset` of observations.

    Episodes are laid out on first access and cached. Examples that the truncation policy drops are
    excluded up front (`prepare()` lays out everything once; `stats` then reports the counts), so
    indices are dense. token_reward / truncation go to `layout`.
    """

    def __init__(self, tok: TokenizerLike, observations: ListDataset, *,
                 truncation: Optional[Truncation] = None, token_reward: float = 0.0,
                 ids: Optional[Sequence[object]] = None):
        self.tok = tok
        self.observations = observations
        self.truncation = truncation
        self.token_reward = token_reward
        self.stats = LayoutStats()
        self._ids = ids
        self._episodes: Optional[list[Episode]] = None

    def prepare(self) -> "EpisodeDataset":
        if self._episodes is None:
            eps = []
            for i in range(len(self.observations)):
                ep = to_episode(self.tok, self.observations[i], truncation=self.truncation,
                                token_reward=self.token_reward, stats=self.stats,
                                example_id=self._ids[i] if self._ids is not None else i)
                if ep is not None:
                    eps.append(ep)
            self._episodes = eps
        return self

    def __len__(self) -> int:
        return len(self.prepare()._episodes)

    def __getitem__(self, i: int) -> Episode:
        return self.prepare()._episodes[i]

    def lengths(self) -> np.ndarray:
        """[N, 2] (tokens, states) per episode."""
        return episode_lengths(self.prepare()._episodes)


class JobRewriteEnv:
    """One-step environment of the job task (FMs-at-work HackernewsEnvironment).

    reset() returns the next prompt in a seeded permutation (upstream drew `random.choice` with
    replacement, so 400 evaluations did not visit 400 distinct prompts); step(action) scores the
    rewrite with `reward_fn(action, prompt)` * scale + shift, and an empty action gets -200*scale
    + shift, as upstream.
    """

    def __init__(self, prompts: Sequence[str], reward_fn: Callable[[str, str], float], *,
                 reward_scale: float = 1.0, reward_shift: float = 0.0, seed: int = 0):
        if len(prompts) == 0:
            raise ValueError("JobRewriteEnv needs at least one prompt")
        self.prompts = list(prompts)
        self.reward_fn = reward_fn
        self.scale, self.shift = reward_scale, reward_shift
        self._order = np.random.default_rng(seed).permutation(len(self.prompts))
        self._pos = 0
        self._obs: Optional[JobObservation] = None

    def reset(self) -> JobObservation:
        prompt = self.prompts[self._order[self._pos % len(self.prompts)]]
        self._pos += 1
        self._obs = JobObservation(prompt)
        return self._obs

    def step(self, action: str) -> tuple[JobObservation, float, bool]:
        if self._obs is None or self._obs.response is not None:
            raise RuntimeError("call reset() before step()")
        raw = -200.0 if action == "" else float(self.reward_fn(action, self._obs.prompt))
        r = raw * self.scale + self.shift
        self._obs = JobObservation(self._obs.prompt, action, r)
        return self._obs, r, True

    def is_terminal(self) -> bool:
        return self._obs is not None and self._obs.response is not None


class JobRewriteTask:
    """The job-description rewrite task over a `JobsDataset`.

    observation(i) -> JobObservation(prompt, original posting, reward); `episodes(tok, ...)` -> an
    EpisodeDataset for training; `prompt_ids(tok, i, max_len)` -> `<s>{prompt}</s>` for generation;
    `env(reward_fn)` -> JobRewriteEnv. Examples without a reward use `default_reward`, or raise.
    """

    def __init__(self, dataset: JobsDataset, default_reward: Optional[float] = None):
        self.dataset = dataset
        self.default_reward = default_reward

    def __len__(self) -> int:
        return len(self.dataset)

    def _reward(self, ex: JobExample) -> float:
        if ex.reward is not None:
            return ex.reward
        if self.default_reward is None:
            raise ValueError(f"example {ex.id} ({ex.metadata.get('source')}) has no reward; "
                             "precompute rewards (JobsDataset.with_rewards) or set default_reward")
        return self.default_reward

    def observation(self, i: int) -> JobObservation:
        ex = self.dataset[i]
        return JobObservation(ex.prompt, ex.response, self._reward(ex))

    def __getitem__(self, i: int) -> JobObservation:
        return self.observation(i)

    def episodes(self, tok: TokenizerLike, truncation: Optional[Truncation] = None,
                 token_reward: float = 0.0) -> EpisodeDataset:
        return EpisodeDataset(tok, self, truncation=truncation, token_reward=token_reward,
                              ids=[e.id for e in self.dataset])

    def prompt_ids(self, tok: TokenizerLike, i: int, max_len: Optional[int] = None) -> np.ndarray:
        return prompt_tokens(tok, self.dataset[i].prompt, max_len)

    def env(self, reward_fn: Callable[[str, str], float], **kwargs) -> JobRewriteEnv:
        return JobRewriteEnv([e.prompt for e in self.dataset], reward_fn, **kwargs)


def iterate_observations(data: Iterable) -> Iterator[Observation]:
    """Yield the items of a list or iterable dataset, checking each is an Observation."""
    for k, obs in enumerate(data):
        if not isinstance(obs, Observation):
            raise TypeError(f"item {k} of the dataset is a {type(obs).__name__}, which has no "
                            "to_sequence() -> (list[(text, reward|None)], terminal)")
        yield obs
