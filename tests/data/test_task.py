"""Task API: a user-defined toy task through layout + batching, and the job task/env."""
from dataclasses import dataclass

import numpy as np
import pytest

from fairjax.data.batching import BatchIterator
from fairjax.data.jobs import JobExample, JobsDataset
from fairjax.data.task import (EpisodeDataset, Environment, IterableDataset, JobObservation,
                               JobRewriteTask, ListDataset, Observation, TextObservation,
                               iterate_observations)
from fairjax.data.layout import Truncation, collate
from fairjax.io.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tok(fixtures_dir):
    return Tokenizer.from_dir(fixtures_dir / "gpt2_tiny" / "hf")


# ---- a toy "echo" task a user could write: the agent must repeat the word; reward 1 if it does.
@dataclass(frozen=True)
class EchoObservation:
    word: str
    answer: str

    def to_sequence(self):
        return [(f"Repeat: {self.word}", None), (self.answer, float(self.answer == self.word))], True


class EchoDataset:
    words = ["alpha", "beta", "gamma", "delta", "epsilon"]

    def __len__(self):
        return len(self.words)

    def __getitem__(self, i):
        w = self.words[i]
        return EchoObservation(w, w if i % 2 == 0 else w[::-1])


class EchoEnv:
    def __init__(self):
        self.obs = None

    def reset(self):
        self.obs = EchoObservation("alpha", "")
        return self.obs

    def step(self, action):
        self.obs = EchoObservation(self.obs.word, action)
        return self.obs, float(action == self.obs.word), True

    def is_terminal(self):
        return self.obs is not None and self.obs.answer != ""


def test_echo_task_through_layout_and_batching(tok):
    data = EchoDataset()
    assert isinstance(data, ListDataset) and isinstance(data[0], Observation)
    assert isinstance(EchoEnv(), Environment)
    eps = EpisodeDataset(tok, data)
    assert len(eps) == 5 and eps.lengths().shape == (5, 2)
    batch = next(BatchIterator(eps, 5, pad_id=tok.pad_id, shuffle=False, buckets=(32,)))
    assert batch["tokens"].shape == (5, 32)
    np.testing.assert_array_equal(batch["rewards"].sum(1), [1, 0, 1, 0, 1])
    # reward sits on the action emitting </a>
    for row in range(5):
        a = int((batch["terminals"][row] == 0).sum()) - 1
        assert batch["tokens"][row, batch["action_idxs"][row, a] + 1] == tok.eoa_id
    env = EchoEnv()
    env.reset()
    _, r, done = env.step("alpha")
    assert r == 1.0 and done and env.is_terminal()


def test_iterable_dataset_and_type_check():
    gen = (TextObservation((("q", None), ("a", 1.0))) for _ in range(3))

    class It:
        def __iter__(self):
            return gen

    assert isinstance(It(), IterableDataset)
    assert len(list(iterate_observations(It()))) == 3
    with pytest.raises(TypeError, match="to_sequence"):
        list(iterate_observations([1]))


def _jobs(n=4, reward=True):
    return JobsDataset([JobExample(f"j{i}", f"Write ad {i}", f"Ad text number {i}.",
                                   -float(i) if reward else None) for i in range(n)])


def test_job_task_episodes_prompt_ids_and_env(tok):
    task = JobRewriteTask(_jobs())
    seq, term = task.observation(1).to_sequence()
    assert seq == [("Write ad 1", None), ("Ad text number 1.", -1.0)] and term
    eps = task.episodes(tok, truncation=Truncation(max_len=12))
    assert len(eps) == 4 and all(e.rewards[-1] == -float(i) for i, e in enumerate(eps))
    assert eps.stats.prompt_trimmed > 0 and all(e.length <= 12 for e in eps)
    ids = task.prompt_ids(tok, 0)
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    seen = []
    env = task.env(lambda text, prompt: len(text), seed=0)
    for _ in range(4):
        obs = env.reset()
        assert not env.is_terminal() and obs.to_sequence()[1] is False
        seen.append(obs.prompt)
        _, r, done = env.step("abc")
        assert r == 3.0 and done and env.is_terminal()
    assert sorted(seen) == sorted(f"Write ad {i}" for i in range(4))  # no repeats in a pass
    env.reset()
    assert env.step("")[1] == -200.0
    with pytest.raises(RuntimeError):
        env.step("again")


def test_missing_reward_is_an_error_unless_defaulted(tok):
    with pytest.raises(ValueError, match="j0 .*has no reward"):
        JobRewriteTask(_jobs(reward=False)).observation(0)
    obs = JobRewriteTask(_jobs(reward=False), default_reward=0.0).observation(0)
    assert obs.to_sequence()[0][1][1] == 0.0
    with pytest.raises(ValueError, match="needs a reward"):
        JobObservation("p", "r").to_sequence()


def test_dropped_examples_are_excluded_and_counted(tok):
    eps = JobRewriteTask(_jobs()).episodes(tok, truncation=Truncation(max_len=8, on_overflow="drop"))
    assert len(eps) < 4 and eps.stats.dropped == 4 - len(eps)
    assert set(eps.stats.dropped_ids) <= {"j0", "j1", "j2", "j3"}
    b = collate([eps[i] for i in range(len(eps))], tok.pad_id) if len(eps) else None
    assert b is None or b["tokens"].shape[1] <= 8
