"""`python -m fairjax.rewrite`: formats (.jsonl with ids, .txt with `---`, stdin), records with
before/after scores, the shipped default, one-line errors naming file and line, resume/refuse."""
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from fairjax import rewrite as W
from fairjax.data.jobs import DataError
from fairjax.rewriters import InclusionStatement, LexiconSwap

REPO = Path(__file__).resolve().parents[2]
A = ("Acme | Senior Backend Engineer | Berlin | Remote\nWe want an aggressive, competitive "
     "rockstar who can lead our analytics work in Python.")
B = "Beta Corp | Data Engineer | London\nBuild Kafka pipelines with a supportive team."


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _read(path):
    return [json.loads(l) for l in Path(path).read_text().splitlines()]


def test_jsonl_with_ids_default_model_and_scores(tmp_path):
    assert W.SHIPPED == "inclusion_statement"
    src = _jsonl(tmp_path / "in.jsonl", [{"id": "a1", "text": A}, {"id": 7, "text": B}])
    out = tmp_path / "out.jsonl"
    recs = W.run(src, str(out))
    rows = _read(out)
    assert rows == recs and [r["id"] for r in rows] == ["a1", "7"]
    assert [r["rewrite"] for r in rows] == InclusionStatement().rewrite([A, B])
    assert rows[0]["model"] == "inclusion_statement"
    a = rows[0]
    assert a["text"] == A and a["after"]["masculine"] < a["before"]["masculine"]
    assert {"masculine", "feminine", "verdict"} <= set(a["before"]) and "reward" not in a["before"]
    assert 0.3 < a["sim"] < 1.0 and a["header_kept"] == 1.0
    table = W.format_table(recs)
    assert "a1" in table and "→" in table


def test_txt_separated_postings_stdin_and_pool(tmp_path):
    from fairjax.data.demo import write_demo

    txt = tmp_path / "postings.txt"
    txt.write_text(f"{A}\n---\n{B}\n")
    recs = W.run(str(txt), str(tmp_path / "o.jsonl"), model="lexicon_swap")
    assert [r["text"] for r in recs] == [A, B] and "id" not in recs[0]
    assert [r["rewrite"] for r in recs] == LexiconSwap().rewrite([A, B])
    one = W.run("-", str(tmp_path / "s.jsonl"), stdin=io.BytesIO(A.encode()))
    assert len(one) == 1 and one[0]["text"] == A
    js = W.run("-", str(tmp_path / "s2.jsonl"),
               stdin=io.BytesIO((json.dumps({"id": "x", "text": B}) + "\n").encode()))
    assert js[0]["id"] == "x"
    pool = write_demo(tmp_path / "demo", n_postings=10, n_candidates=80)["candidates"]
    scored = W.run(str(txt), str(tmp_path / "p.jsonl"), pools=[pool])
    assert all(isinstance(r["before"]["reward"], float) and isinstance(r["after"]["reward"], float)
               for r in scored)
    assert "Δreward" in W.format_table(scored)


@pytest.mark.parametrize("name,content,match", [
    ("e.txt", f"{A}\n---\n   \n---\n{B}\n".encode(), r"e\.txt:4: empty posting"),
    ("bin.txt", b"Acme\n\x00\x01\x02", r"bin\.txt:2: not a text file"),
    ("u.txt", b"Acme\nhiring \xff\xfe", r"u\.txt:2: not a text file"),
    ("n.jsonl", (json.dumps({"text": A}) + "\n" + json.dumps({"body": B}) + "\n").encode(),
     r"n\.jsonl:2: no 'text' field"),
    ("j.jsonl", b'{"text": "ok"}\n{not json\n', r"j\.jsonl:2: invalid JSON"),
    ("z.jsonl", (json.dumps({"text": "  "}) + "\n").encode(), r"z\.jsonl:1: empty posting"),
])
def test_bad_input_names_file_and_line(tmp_path, name, content, match):
    p = tmp_path / name
    p.write_bytes(content)
    with pytest.raises(DataError, match=match):
        W.run(str(p), str(tmp_path / "out.jsonl"))
    assert not (tmp_path / "out.jsonl").exists()


def test_rerun_continues_keeps_records_and_refuses_others(tmp_path):
    out = tmp_path / "out.jsonl"
    first = _jsonl(tmp_path / "a.jsonl", [{"id": "1", "text": A}])
    W.run(first, str(out))
    kept = out.read_bytes()
    both = _jsonl(tmp_path / "b.jsonl", [{"id": "1", "text": A}, {"id": "2", "text": B}])
    new = W.run(both, str(out))  # continues after the record already there
    assert [r["id"] for r in new] == ["2"] and out.read_bytes().startswith(kept)
    assert W.run(both, str(out)) == [] and len(_read(out)) == 2
    with pytest.raises(DataError, match=r"out\.jsonl:1: holds a rewrite of another"):
        W.run(both, str(out), model="lexicon_swap")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "1", "text": A}) + "\n" + json.dumps({"id": "3"}) + "\n")
    before = out.read_bytes()
    with pytest.raises(DataError, match=r"bad\.jsonl:2: no 'text' field"):
        W.run(str(bad), str(out))
    assert out.read_bytes() == before  # nothing already written is lost
    out.write_bytes(before + b'{"index": 2, "te')  # a crash mid-line: dropped, then redone
    assert W.run(both, str(out)) == [] and out.read_bytes() == before


def test_cli_one_line_error_and_success(tmp_path):
    bad = _jsonl(tmp_path / "in.jsonl", [{"text": A}, {"title": "no text"}])
    out = tmp_path / "o.jsonl"
    p = subprocess.run([sys.executable, "-m", "fairjax.rewrite", f"--input={bad}", f"--output={out}"],
                       cwd=REPO, capture_output=True, text=True)
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip().splitlines() == [f"error: {bad}:2: no 'text' field: each line needs an "
                                             "object with a string 'text' (and optionally 'id')"]
    good = _jsonl(tmp_path / "g.jsonl", [{"id": "k", "text": A}])
    p = subprocess.run([sys.executable, "-m", "fairjax.rewrite", f"--input={good}", f"--output={out}"],
                       cwd=REPO, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "k" in p.stdout and _read(out)[0]["model"] == "inclusion_statement"


def test_load_rewriter_policy_and_prompted(fixtures_dir):
    hf = str(fixtures_dir / "gpt2_tiny" / "hf")
    pol = W.load_rewriter(hf)
    out = pol.rewrite([A, B])
    assert len(out) == 2 and all(isinstance(t, str) for t in out) and pol.name == hf
    pr = W.load_rewriter(f"prompted:{hf}")
    assert pr.name == f"prompted:{hf}" and len(pr.rewrite([B])) == 1
    assert W.load_rewriter("lexicon_swap").rewrite([A]) == LexiconSwap().rewrite([A])
    with pytest.raises(ValueError, match="not a baseline"):
        W.load_rewriter("no/such/dir")
