"""fairjax.cli: a user's mistake (bad data, bad key, missing or empty file, config typo) ends the
score/convert/evaluate/rate commands with ONE `error:` line on stderr and exit status 2; a bug
still shows its traceback; no third-party log noise."""
import numpy as np
import pytest

from cli_helpers import NOISE
from cli_helpers import run_cli as _run
from fairjax import cli


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    (d / "bad.jsonl").write_text('{"text": "Engineer wanted"}\n{"posting": "no text field"}\n')
    (d / "empty.jsonl").write_text("")
    (d / "pool.jsonl").write_text('{"id": "c1", "text": "a b", "gender": "female"}\n')
    (d / "scored.json").write_text('{"not": "scores"}\n')
    return d


CASES = [  # (module, args with {d} = data dir, text the one line must contain)
    ("score", ["--texts={d}/missing.jsonl", "--pool={d}/pool.jsonl"], "{d}/missing.jsonl"),
    ("score", ["--texts={d}/bad.jsonl", "--pool={d}/pool.jsonl"],
     "{d}/bad.jsonl:2: missing text field 'text'"),
    ("score", ["--texts={d}/bad.jsonl", "--pool={d}/pool.jsonl", "--text_field=posting"],
     "--text_field=NAME"),
    ("score", ["--texts={d}/empty.jsonl", "--pool={d}/pool.jsonl"], "{d}/empty.jsonl: no records"),
    ("score", ["--texts={d}/empty.jsonl", "--pool={d}/pool.jsonl", "--annotate={d}/o.jsonl"],
     "{d}/empty.jsonl: no records"),
    ("rate", ["effects", "--scored={d}/scored.json"], "{d}/scored.json:1: no reward block"),
    ("rate", ["effects", "--scored={d}/missing.jsonl"], "{d}/missing.jsonl"),
    ("convert", ["--source={d}/missing", "--output={d}/out"], "{d}/missing does not exist"),
    ("convert", ["--source={d}", "--output={d}/out"], "not a Hugging Face directory"),
    ("evaluate", ["--config=configs/eval.py", "--config.limitt=3"],
     "--config.limitt: the config has no key 'limitt'; did you mean --config.limit?"),
    ("evaluate", ["--config=configs/eval.py", "--config.generationn.top_k=3"],
     "did you mean --config.generation.top_k?"),
    ("evaluate", ["--config=configs/missing.py"], "--config=configs/missing.py: cannot load"),
    ("evaluate", ["--config=configs/eval.py", "--config.limit=abc"], "--config.limit=abc"),
    ("evaluate", ["--config=configs/eval.py", "--config.checkpoint={d}/missing",
                  "--config.output_dir={d}/ev"], "{d}/missing does not exist"),
]


@pytest.mark.parametrize("module,args,expect", CASES,
                         ids=[f"{m}-{i}" for i, (m, _, _) in enumerate(CASES)])
def test_user_error_is_one_line(files, tmp_path, module, args, expect):
    res = _run(module, *[a.format(d=files) for a in args], tmp_path=tmp_path)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == cli.EXIT_USER_ERROR, res.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr[-3000:]
    assert expect.format(d=files) in lines[0]
    assert "Traceback" not in res.stderr and not any(n in res.stderr for n in NOISE)


def test_config_override_error_names_the_full_flag():
    e = KeyError('\'lrr\'\nDid you mean "lr" instead of "lrr"?')
    argv = ["train", "--config=configs/bc.py", "--config.optim.lrr=1e-3"]
    assert cli.config_override_error(e, argv) == (
        "error: --config.optim.lrr: the config has no key 'lrr'; did you mean --config.optim.lr?")
    assert cli.config_override_error(KeyError("x"), ["train", "--config=c.py"]) is None


def test_only_fairjax_errors_are_user_errors():
    from fairjax.data.jobs import DataError

    assert cli.is_user_error(DataError("f.jsonl:3: bad"))
    assert cli.is_user_error(FileNotFoundError(2, "No such file or directory", "x.jsonl"))
    try:
        np.reshape(np.zeros(3), (2, 2))  # a ValueError raised inside numpy: a bug, not the user's
    except ValueError as e:
        assert not cli.is_user_error(e)
    assert not cli.is_user_error(KeyError("k"))
    msg = cli.format_error(FileNotFoundError(2, "No such file or directory", "x.jsonl"))
    assert msg == "error: No such file or directory: x.jsonl"
