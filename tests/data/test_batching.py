"""BatchIterator: determinism by (seed, epoch), resume, per-process sharding, buckets, remainder."""
import numpy as np
import pytest

from fairjax.data.batching import BatchIterator
from fairjax.data.layout import layout_example


class CharTok:
    eoa_id, boa_id, eod_id, bos_id, eos_id, pad_id = 1000, 1001, 1002, 1003, 1004, 1005

    def encode_text(self, text):
        return [ord(c) % 900 for c in text]


@pytest.fixture(scope="module")
def episodes():
    rng = np.random.default_rng(0)
    t = CharTok()
    return [layout_example(t, "p" * int(rng.integers(3, 40)), f"r{i}" * int(rng.integers(1, 20)),
                           float(i)) for i in range(23)]


def _ids(batch):  # the example index is encoded in the reward of its last action
    return [int(r[r != 0][-1]) if (r != 0).any() else 0 for r in batch["rewards"]]


def _take(it, n):
    return [next(it) for _ in range(n)]


def test_deterministic_by_seed_and_epoch(episodes):
    a = _take(BatchIterator(episodes, 4, pad_id=1005, seed=3), 12)
    b = _take(BatchIterator(episodes, 4, pad_id=1005, seed=3), 12)
    c = _take(BatchIterator(episodes, 4, pad_id=1005, seed=4), 12)
    for x, y in zip(a, b):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    assert [_ids(x) for x in a] != [_ids(x) for x in c]
    per_epoch = 23 // 4
    e0 = sum((_ids(x) for x in a[:per_epoch]), [])
    e1 = sum((_ids(x) for x in a[per_epoch:2 * per_epoch]), [])
    assert len(set(e0)) == len(e0) == 20 and e0 != e1  # no repeats within an epoch, reshuffled


def test_resume_gives_identical_batches(episodes):
    it = BatchIterator(episodes, 4, pad_id=1005, seed=1, group_batches=2)
    _take(it, 7)  # crosses an epoch boundary (5 batches per epoch)
    state = it.state()
    assert state["epoch"] == 1 and state["index"] == 8
    rest = _take(it, 6)
    resumed = BatchIterator(episodes, 4, pad_id=1005, seed=1, group_batches=2, state=dict(state))
    for x, y in zip(rest, _take(resumed, 6)):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    with pytest.raises(ValueError, match="does not match"):
        BatchIterator(episodes, 4, pad_id=1005, seed=2, state=state)
    with pytest.raises(ValueError, match="missing key"):
        BatchIterator(episodes, 4, pad_id=1005, state={"epoch": 0})


def test_process_shards_form_the_global_batch(episodes):
    glob = _take(BatchIterator(episodes, 4, pad_id=1005, seed=5, buckets=(16, 32, 64, 128)), 5)
    parts = [_take(BatchIterator(episodes, 4, pad_id=1005, seed=5, process_index=p, process_count=2,
                                 buckets=(16, 32, 64, 128)), 5) for p in range(2)]
    for g, p0, p1 in zip(glob, *parts):
        assert p0["tokens"].shape == p1["tokens"].shape == (2, g["tokens"].shape[1])
        for k in g:
            np.testing.assert_array_equal(np.concatenate([p0[k], p1[k]]), g[k])
        assert g["tokens"].shape[1] in (16, 32, 64, 128) and g["state_idxs"].shape[1] in (16, 32, 64, 128)


def test_remainder_padding_and_epochs(episodes):
    it = BatchIterator(episodes, 4, pad_id=1005, shuffle=False, drop_remainder=False, num_epochs=2,
                       extras=True)
    batches = list(it)
    assert len(batches) == 2 * 6
    last = batches[5]
    assert last["tokens"].shape[0] == 4
    assert (last["tokens"][3:] == 1005).all() and (last["terminals"][3:] == 1).all()
    assert (last["attn_mask"][3:] == 0).all() and last["sequence_reward"][3] == 0
    assert _ids(batches[0]) == [0, 1, 2, 3]  # shuffle=False keeps order (reward i on example i)


def test_bad_arguments(episodes):
    with pytest.raises(ValueError, match="multiple of process_count"):
        BatchIterator(episodes, 3, pad_id=1005, process_count=2)
    with pytest.raises(ValueError, match="process_index"):
        BatchIterator(episodes, 4, pad_id=1005, process_index=2, process_count=2)
    with pytest.raises(ValueError, match="batch_size"):
        BatchIterator(episodes[:2], 4, pad_id=1005)
    with pytest.raises(ValueError, match="pad_id"):
        BatchIterator(episodes, 4)
    with pytest.raises(ValueError, match="largest bucket"):
        next(BatchIterator(episodes, 4, pad_id=1005, buckets=(8,)))
