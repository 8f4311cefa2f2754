"""`python -m fairjax.train` with a user's mistake (bad key, missing/empty/bad data file, no
rewards): ONE `error:` line naming the full flag or file:line and the fix, exit status 2, and
no run directory left behind."""
import pytest

from fairjax import cli

from cli_helpers import NOISE
from cli_helpers import run_cli as _run


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("train_cli")
    (d / "bad.jsonl").write_text('{"text": "Engineer wanted", "reward": 1}\n'
                                 '{"posting": "no text field", "reward": 1}\n')
    (d / "empty.jsonl").write_text("")
    (d / "unscored.jsonl").write_text('{"id": "a", "text": "Engineer wanted in Paris"}\n')
    return d


CASES = [  # (overrides with {d} = data dir, text the one line must contain)
    (["--config.optim.lrr=1e-3"],
     "--config.optim.lrr: the config has no key 'lrr'; did you mean --config.optim.lr?"),
    (["--config.data.train={d}/missing.jsonl"],
     "--config.data.train={d}/missing.jsonl: no such file"),
    (["--config.data.train={d}/empty.jsonl"], "{d}/empty.jsonl"),
    (["--config.data.train={d}/bad.jsonl"], "{d}/bad.jsonl:2: missing text field 'text'"),
    (["--config.data.train={d}/bad.jsonl"], "--config.data.text_field=NAME"),
    # ILQL on the data's own reward field (BC needs none): refused before the pipeline's BC stage writes anything
    (["--config=configs/ilql.py", "--config.reward.scorer=", "--config.data.train={d}/unscored.jsonl"],
     "--config.reward.scorer=diversity"),
]


@pytest.mark.parametrize("args,expect", CASES, ids=[str(i) for i in range(len(CASES))])
def test_train_user_error_is_one_line_and_leaves_nothing(files, tmp_path, args, expect):
    run_dir = tmp_path / "run"
    config = [a for a in args if a.startswith("--config=")] or ["--config=configs/bc.py"]
    res = _run("train", *config, f"--run_dir={run_dir}",
               *[a.format(d=files) for a in args if not a.startswith("--config=")],
               tmp_path=tmp_path)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == cli.EXIT_USER_ERROR, res.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr[-3000:]
    assert expect.format(d=files) in lines[0], lines[0]
    assert "Traceback" not in res.stderr and not any(n in res.stderr for n in NOISE)
    assert not run_dir.exists()


def test_bc_trains_on_postings_without_reward(tmp_path):
    """BC is maximum likelihood: a JSONL of bare postings (no reward field) trains."""
    data = tmp_path / "bare.jsonl"
    data.write_text("".join(f'{{"id": "p{i}", "text": "Engineer {i} wanted in Paris | Python, SQL"}}\n'
                            for i in range(8)))
    run_dir = tmp_path / "run"
    res = _run("train", "--config=configs/bc.py", f"--run_dir={run_dir}",
               f"--config.data.train={data}", "--config.train.steps=2",
               "--config.optim.batch_size=4", "--config.data.max_len=64",
               "--config.data.buckets=(64,)", "--config.train.progress=False",
               "--config.model.demo_vocab_size=300", tmp_path=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (run_dir / "metrics.jsonl").exists()
