"""TFDS array_record builder: round trip without TensorFlow, random access, resumable iteration."""
import importlib.util
import json
import subprocess
import sys

import pytest

from fairjax.data.jobs import DataError, JobsDataset
from fairjax.data.tfds_jobs import JobsBuilderConfig, ResumableIterator, jobs_data_source

ROWS = [{"id": f"p{i}", "text": f"Co{i} | Berlin, Germany | Backend Engineer | REMOTE\n\nPython job {i}.",
         "reward": float(-i)} for i in range(12)] + [{"id": "p12", "text": "No header, no reward."}]


@pytest.fixture()
def src(tmp_path):
    p = tmp_path / "jobs.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n", encoding="utf-8")
    return p


def test_round_trip_random_access_and_resume(tmp_path, src):
    cfg = JobsBuilderConfig(name="t1", sources={"train": str(src)})
    ds = jobs_data_source(tmp_path / "tfds", "train", cfg)
    assert len(ds) == len(ROWS)
    want = {e.id: e for e in JobsDataset.from_file(src)}
    recs = list(ds)
    assert {r["id"] for r in recs} == set(want)
    for r in recs:
        e = want[r["id"]]
        assert r["prompt"] == e.prompt and r["response"] == e.response and r["reward"] == e.reward
    assert ds[3] == recs[3] and ds[-1] == recs[-1]
    with pytest.raises(IndexError):
        ds[len(ds)]
    # reopen from the files alone (no config) and via the hashed single-source split
    again = jobs_data_source(tmp_path / "tfds", "train")
    assert [r["id"] for r in again] == [r["id"] for r in recs]
    it = ResumableIterator(again, repeat=True)
    first = [next(it)["id"] for _ in range(len(ROWS) + 3)]
    state = it.state()
    assert state == {"index": 3, "epoch": 1}
    nxt = [next(it)["id"] for _ in range(4)]
    assert [next(ResumableIterator(again, repeat=True, state=state))["id"]] == nxt[:1]
    assert first[:3] == first[len(ROWS):]
    with pytest.raises(ValueError):
        ResumableIterator(again, state={"index": 999, "epoch": 0})


def test_hashed_split_and_errors(tmp_path, src):
    fr = {"train": 0.5, "eval": 0.5}
    cfg = JobsBuilderConfig(name="t2", source=str(src), fractions=fr)
    tr = jobs_data_source(tmp_path / "tfds", "train", cfg)
    ev = jobs_data_source(tmp_path / "tfds", "eval", cfg)
    assert len(tr) + len(ev) == len(ROWS)
    assert {r["id"] for r in ev} == {e.id for e in JobsDataset.from_file(src, split="eval", fractions=fr)}
    with pytest.raises(FileNotFoundError, match="config_name"):
        jobs_data_source(tmp_path / "tfds", "train", config_name="nope")
    with pytest.raises(ValueError, match="exactly one"):
        jobs_data_source(tmp_path / "x", "train", JobsBuilderConfig(name="t3"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": ""}\n', encoding="utf-8")
    with pytest.raises(DataError, match="bad.jsonl:1"):
        jobs_data_source(tmp_path / "y", "train", JobsBuilderConfig(name="t4", sources={"train": str(bad)}))


def test_works_with_tensorflow_absent(tmp_path, src):
    """The environment has no TensorFlow (`import tensorflow` fails); build + read must still work
    in a fresh process and never import it."""
    if importlib.util.find_spec("tensorflow") is not None:
        pytest.skip("tensorflow is installed here; this test checks the TF-free path")
    code = f"""
import sys
try:
    import tensorflow
    raise SystemExit('tensorflow importable')
except ImportError:
    pass
from fairjax.data.tfds_jobs import JobsBuilderConfig, jobs_data_source
cfg = JobsBuilderConfig(name='notf', sources={{'train': {str(src)!r}}})
ds = jobs_data_source({str(tmp_path / 'tfds')!r}, 'train', cfg)
assert len(ds) == {len(ROWS)} and ds[0]['prompt']
assert 'tensorflow' not in sys.modules
print('OK')
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-2000:]
