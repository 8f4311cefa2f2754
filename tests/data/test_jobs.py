"""Job task ingestion: bad lines, CSV, HTML cleanup, prompt template, heuristics, hashed splits."""
import json

import pytest

from fairjax.data.jobs import (REMOTE_NO, REMOTE_UNKNOWN, REMOTE_YES, DataError, JobsDataset,
                               ReadStats, build_prompt, clean_html, extract_fields, read_records,
                               split_of, technologies_in)

GOOD = {"id": "a1", "text": "Acme | Berlin, Germany | Backend Engineer | REMOTE\n\nWe use Python."}


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("line, reason", [
    ('{"id": "x", "text": "hi"', "invalid JSON"),
    ('["text"]', "expected a JSON object"),
    ('{"id": "x"}', "missing text field 'text'"),
    ('{"text": 5}', "field 'text' must be a string"),
    ('{"text": "   "}', "'text' is empty"),
    ('{"text": "<p></p>"}', "empty after HTML cleanup"),
    ('{"text": "ok", "reward": "high"}', "field 'reward' must be a number"),
    ('{"text": "ok", "reward": true}', "field 'reward' must be a number"),
    ('{"text": "ok", "reward": NaN}', "must be finite"),
    ('{"text": "ok", "location": 3}', "field 'location' must be a string"),
    ('{"text": "ok", "technologies": [1]}', "list of strings"),
    ('{"text": "ok", "technologies": 1}', "string or a list"),
    ('{"text": "ok", "id": [1]}', "field 'id'"),
])
def test_bad_lines_raise_with_file_and_line(tmp_path, line, reason):
    p = _write(tmp_path / "d.jsonl", [json.dumps(GOOD), "", line])
    with pytest.raises(DataError) as e:
        read_records(p)
    assert f"{p}:3: " in str(e.value) and reason in str(e.value)
    stats = ReadStats()
    recs = read_records(p, on_error="skip", stats=stats)
    assert len(recs) == 1 and stats.skipped == 1 and stats.kept == 1
    assert stats.errors[0].startswith(f"{p}:3:")


def test_missing_file_and_bad_option(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_records(tmp_path / "nope.jsonl")
    with pytest.raises(ValueError, match="on_error"):
        read_records(tmp_path / "nope.jsonl", on_error="ignore")


def test_csv_and_custom_text_field(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text('id,body,reward,technologies\n'
                 'j1,"Acme | Paris | Data Scientist\n\nWe hire.",-3.5,"Python; SQL"\n'
                 'j2,"",1,\n'
                 'j3,"Beta | NYC | Engineer",abc,\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"d\.csv:5: field 'body' is empty"):
        read_records(p, text_field="body")
    st = ReadStats()
    recs = read_records(p, text_field="body", on_error="skip", stats=st)
    assert [r["id"] for r in recs] == ["j1"] and st.skipped == 2
    assert recs[0]["reward"] == -3.5 and recs[0]["technologies"] == ["Python", "SQL"]
    assert "Data Scientist" in recs[0]["text"] and st.errors[1].startswith(f"{p}:6:")


def test_clean_html_keeps_link_text_and_literal_words():
    raw = ('Acme &amp; Co<p>Apply <a href="https://acme.io/jobs/very/long">https://acme.io/jobs/ve...</a>'
           ' or <a href="mailto:x@acme.io">email us</a><br>Reply to &lt;at&gt; <company> now</p>'
           '<ul><li>Go</li></ul>')
    out = clean_html(raw)
    assert out == ("Acme & Co\n\nApply https://acme.io/jobs/very/long or email us\n"
                   "Reply to <at> <company> now\n\n- Go")


def test_clean_html_keeps_literal_control_strings():
    assert clean_html("Use <s> and </a> tags") == "Use <s> and </a> tags"
    raw = "Write <a> or </s>, never </eod> or <|pad|><br>"
    assert clean_html(raw) == "Write <a> or </s>, never </eod> or <|pad|>"
    # a real anchor still becomes its text, and a later literal </a> survives it
    out = clean_html('See <a href="https://x.io">our site</a>; type </a> then <s> <b>now</b>')
    assert out == "See our site; type </a> then <s> now"


def test_prompt_template_exact_wording():
    p = build_prompt("Orig text", "Paris or Remote", "Acme", "Backend Engineer", ["Python", "SQL"])
    assert p == ("Original job description for reference: 'Orig text' \nBased on the original "
                 "description, the job is located in Paris or Remote. The company, Acme, is seeking a "
                 "qualified individual for the Backend Engineer position. The ideal candidate would be "
                 "skilled in the following technologies: Python, SQL. This job offers the option to work "
                 "remotely. Write a new job description using only the information provided in the "
                 "original description.")
    assert REMOTE_NO in build_prompt("Sorry, no remote.", "Berlin")
    assert REMOTE_UNKNOWN in build_prompt("Hi", "Berlin")
    assert REMOTE_YES in build_prompt("Hi", "Berlin", remote=True)
    assert "located in unknown" in build_prompt("Hi")


def test_extract_fields_from_hn_header():
    f = extract_fields("Thinknum | New York | Backend Engineer | On-site - Full-time | VISA\n\n"
                       "We use Python and Javascript with React Native and golang.")
    assert f["company"] == "Thinknum" and f["location"] == "New York"
    assert f["title"] == "Backend Engineer" and f["remote"] is False
    assert f["technologies"] == ["Python", "JavaScript", "React Native", "Go"]
    g = extract_fields("Rollbar | https://rollbar.com | San Francisco or REMOTE | Lead SDK Engineer")
    assert g["location"] == "San Francisco or REMOTE" and g["remote"] is True
    assert g["title"] == "Lead SDK Engineer"
    h = extract_fields("We are hiring a Senior Data Engineer in London to build pipelines.")
    assert h["company"] is None and h["title"] == "Senior Data Engineer" and h["location"] == "London"
    assert technologies_in("go home, we do it") == []


def test_split_of_is_deterministic_and_validates():
    assert split_of("hn-1") == split_of("hn-1")
    counts = {}
    for i in range(2000):
        s = split_of(f"k{i}", {"train": 0.5, "eval": 0.25, "test": 0.25})
        counts[s] = counts.get(s, 0) + 1
    assert set(counts) == {"train", "eval", "test"} and 850 < counts["train"] < 1150
    with pytest.raises(ValueError, match="sum to 1"):
        split_of("x", {"train": 0.5})
    with pytest.raises(ValueError, match="non-negative"):
        split_of("x", {"train": 1.5, "eval": -0.5})


def test_dataset_hashed_split_and_rewards(tmp_path):
    rows = [dict(GOOD, id=f"id{i}", reward=float(i)) for i in range(40)]
    p = _write(tmp_path / "d.jsonl", [json.dumps(r) for r in rows])
    fr = {"train": 0.75, "eval": 0.25}
    tr = JobsDataset.from_file(p, split="train", fractions=fr)
    ev = JobsDataset.from_file(p, split="eval", fractions=fr)
    assert len(tr) + len(ev) == 40 and not {e.id for e in tr} & {e.id for e in ev}
    ex = tr[0]
    assert ex.response.startswith("Acme |") and ex.prompt.startswith("Original job description")
    assert ex.metadata["location"] == "Berlin, Germany" and "location" in ex.metadata["extracted"]
    assert ex.metadata["source"].startswith(str(p))
    ev2 = ev.with_rewards([1.0] * len(ev))
    assert all(e.reward == 1.0 for e in ev2)
    with pytest.raises(ValueError, match="rewards for"):
        ev.with_rewards([1.0])
    with pytest.raises(ValueError, match="not one of"):
        JobsDataset.from_file(p, split="test", fractions=fr)


def test_given_fields_win_over_heuristics(tmp_path):
    p = _write(tmp_path / "d.jsonl", [json.dumps(dict(GOOD, location="Mars", title="Pilot"))])
    ex = JobsDataset.from_file(p)[0]
    assert "located in Mars" in ex.prompt and "for the Pilot position" in ex.prompt
    assert ex.metadata["extracted"] == ["company", "technologies"]


def test_loads_real_hn_eval_split(shared_data_dir):
    path = shared_data_dir / "hn_jobs" / "eval.jsonl"
    if not path.exists():
        pytest.skip("hn_jobs not present")
    ds = JobsDataset.from_file(path)
    n_lines = sum(1 for ln in open(path, encoding="utf-8") if ln.strip())
    assert len(ds) == n_lines and ds.read_stats.skipped == 0
    # the split files were made by sha256(id) mod 10 -> 8 = eval; our hashed rule reproduces it
    assert all(split_of(e.id) == "eval" for e in ds)
    located = sum(e.metadata["location"] is not None for e in ds) / len(ds)
    assert located > 0.8
