"""fairjax.serve: the JSON API, bad input, the bounded rewrite queue, concurrency and the CLI."""
from __future__ import annotations

import concurrent.futures
import json
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from serve_helpers import REPO, cli_server, thread_server

from fairjax.rewards import lexicon
from fairjax.rewriters import LexiconRewriter
from fairjax.serve.app import create_app
from fairjax.serve.service import (
    InputError,
    QueueFull,
    RewriteQueue,
    RewriterAdapter,
    Services,
    demo_pool,
    parse_upload,
    word_diff,
)

POSTING = ("Acme | Berlin | Senior Backend Engineer | ONSITE | Full-time\n"
           "We want a competitive, ambitious leader who thrives on challenges and decides fast. "
           "You are supportive of teammates and committed to quality. "
           "Apply: jobs@acme.example.com or call +49 30 1234 5678.")


@pytest.fixture(scope="module")
def services():
    return Services(rewriter=RewriterAdapter.lexicon())


@pytest.fixture(scope="module")
def client(services):
    with TestClient(create_app(services)) as c:
        yield c


def test_score_marks_each_coded_word_in_place(client):
    r = client.post("/api/score", json={"text": POSTING})
    assert r.status_code == 200, r.text
    out = r.json()
    assert set(out) >= {"coded_words", "verdict", "diversity", "impact_ratios", "pii"}
    words = out["coded_words"]
    for w in words:
        assert POSTING[w["start"]:w["end"]] == w["word"]
    c = lexicon.code_text(POSTING)
    assert [w["word"].lower() for w in words if w["kind"] == "masculine"] == list(c.masculine_words)
    assert [w["word"].lower() for w in words if w["kind"] == "feminine"] == list(c.feminine_words)
    assert {"competitive", "ambitious", "leader", "challenges"} <= {w["word"] for w in words}
    assert out["verdict"] == c.verdict == "slightly masculine-coded"
    assert out["pii"]["counts"]["email"] == 1 and out["pii"]["counts"]["phone"] == 1
    assert "Gaucher" in out["lexicon"]


def test_coded_spans_keep_offsets_of_the_original_text():
    text = "İİ Competitive  LEAD; self-reliant, kind"
    spans = lexicon.coded_spans(text)
    assert [(text[s:e], k) for s, e, _, k in spans] == [
        ("Competitive", "masculine"), ("LEAD", "masculine"), ("self-reliant", "masculine"),
        ("kind", "feminine")]


def test_impact_ratios_match_an_independent_selection_count(client, services):
    """Top-k matching recomputed here (stable argsort) and selection rates by fairlearn."""
    from fairlearn.metrics import MetricFrame, selection_rate

    out = client.post("/api/score", json={"text": POSTING}).json()
    sc = services.diversity
    sim = sc.embedder.embed([POSTING])[0] @ sc.pool_emb.T  # [M]
    top = np.argsort(-sim, kind="stable")[: sc.config.k]
    gender = services.pool.gender[top]
    selected = np.zeros(len(top), int)
    selected[: sc.config.select_k] = 1
    mf = MetricFrame(metrics=selection_rate, y_true=selected, y_pred=selected,
                     sensitive_features=gender)
    rates = mf.by_group.to_dict()
    best = max(rates.values())
    for g, sr in rates.items():
        assert out["selection_rates"]["gender"][g] == pytest.approx(sr)
        assert out["impact_ratios"]["gender"][g] == pytest.approx(sr / best)
    shares = {g: float(np.mean(gender == g)) for g in rates}
    assert out["diversity"]["shares"]["gender"] == pytest.approx(shares)
    assert out["diversity"]["reward"] == pytest.approx(float(sc.score_texts([POSTING])[0]))


def test_rewrite_returns_diff_and_before_after(client):
    r = client.post("/api/rewrite", json={"text": POSTING})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["rewrite"] == LexiconRewriter().rewrite([POSTING], np.zeros(1, bool))[0]
    diff = out["diff"]
    assert "".join(p["text"] for p in diff if p["op"] != "insert") == POSTING
    assert "".join(p["text"] for p in diff if p["op"] != "delete") == out["rewrite"]
    deleted = {p["text"].strip() for p in diff if p["op"] == "delete"}
    assert "competitive" in deleted and "ambitious" in deleted
    assert out["before"]["verdict"] == "slightly masculine-coded"
    assert out["after"]["masculine"] < out["before"]["masculine"]
    assert out["after"]["coded_words"] == client.post("/api/score", json={"text": out["rewrite"]}).json()["coded_words"]


@pytest.mark.parametrize("a,b", [("", "x"), ("a b c", "a c"), ("one, two.\n", "one; two!\n three"),
                                 ("same", "same"), ("Leader  here", "mentor here")])
def test_word_diff_reconstructs_both_texts(a, b):
    d = word_diff(a, b)
    assert "".join(p["text"] for p in d if p["op"] != "insert") == a
    assert "".join(p["text"] for p in d if p["op"] != "delete") == b
    assert all(p["text"] for p in d) and all(x["op"] != y["op"] for x, y in zip(d, d[1:]))


def test_healthz_and_page(client, services):
    h = client.get("/healthz").json()
    assert h["status"] == "ok" and h["pool_size"] == len(services.pool) == 400
    page = client.get("/")
    assert page.status_code == 200
    assert "default-src 'self'" in page.headers["content-security-policy"]
    text = page.text
    assert "Gaucher" in text and "demo candidates" in text and "female 214" in text.replace("\n", " ")
    assert "http://" not in text and "https://" not in text  # nothing from the network
    assert client.get("/static/app.js").status_code == 200


def test_page_escapes_pool_names():
    pool = demo_pool(40)
    pool.sources = ("<script>alert(1)</script>",)
    svc = Services(pool=pool, rewriter=RewriterAdapter.lexicon())
    with TestClient(create_app(svc)) as c:
        text = c.get("/").text
    assert "<script>alert(1)</script>" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text


BAD_BODIES = [
    (b'{"text": "unterminated', 400, "malformed JSON"),
    (b"\xff\xfe{}", 400, "not valid UTF-8"),
    (b'{"text": "caf\xc3"}', 400, "not valid UTF-8"),
    (b"{}", 422, "missing field 'text'"),
    (b'{"text": ""}', 422, "'text' is empty"),
    (b'{"text": "  \\n "}', 422, "'text' is empty"),
    (b'{"text": 3}', 422, "must be a string"),
    (b'["text"]', 422, "JSON object"),
]


@pytest.mark.parametrize("endpoint", ["/api/score", "/api/rewrite"])
@pytest.mark.parametrize("body,status,msg", BAD_BODIES)
def test_bad_bodies_get_a_json_error_and_the_server_keeps_serving(client, endpoint, body, status, msg):
    r = client.post(endpoint, content=body, headers={"content-type": "application/json"})
    assert r.status_code == status and msg in r.json()["error"], r.text
    assert client.post(endpoint, json={"text": POSTING}).status_code == 200


def test_body_over_one_megabyte_is_413_with_or_without_content_length(client):
    big = json.dumps({"text": "x" * (1 << 20)}).encode()
    r = client.post("/api/score", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "body over" in r.json()["error"]

    def chunks():  # streamed: no Content-Length header
        for s in range(0, len(big), 65536):
            yield big[s:s + 65536]

    r = client.post("/api/score", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "body over" in r.json()["error"]
    assert client.post("/api/score", json={"text": POSTING}).status_code == 200


def test_unknown_route_and_method_are_json(client):
    assert client.get("/api/nope").json() == {"error": "Not Found"}
    r = client.get("/api/score")
    assert r.status_code == 405 and "error" in r.json()


# ----------------------------------------------------------------------------- uploads
def _upload(client, name, data):
    return client.post("/api/parse", files={"file": (name, data)})


def test_upload_formats(client):
    r = _upload(client, "p.jsonl", b'{"id": "a", "text": "competitive"}\n\n{"text": "kind"}\n')
    assert r.status_code == 200 and [(p["id"], p["line"]) for p in r.json()["postings"]] == \
        [("a", 1), ("p.jsonl:3", 3)]
    r = _upload(client, "p.csv", b'id,text\nx,"one, with comma"\ny,"two\nlines"\n')
    assert [p["text"] for p in r.json()["postings"]] == ["one, with comma", "two\nlines"]
    r = _upload(client, "p.txt", "first posting\n---\nsecond\nposting é\n".encode())
    assert [(p["line"], p["text"]) for p in r.json()["postings"]] == [(1, "first posting"),
                                                                      (3, "second\nposting é")]


@pytest.mark.parametrize("name,data,status,msg", [
    ("p.jsonl", b'{"text": "ok"}\n{"text": "ok"\n', 400, "p.jsonl:2: not valid JSON"),
    ("p.jsonl", b'{"text": "ok"}\n\n{"body": "x"}\n', 422, "p.jsonl:3: missing field 'text'"),
    ("p.jsonl", b'{"text": "ok"}\n{"text": ""}\n', 422, "p.jsonl:2: field 'text' is empty"),
    ("p.csv", b"id,body\n1,x\n", 400, "p.csv:1: the header has no 'text' column"),
    ("p.csv", b"text\nok\n\"\"\n", 400, "p.csv:3: empty 'text'"),
    ("p.txt", b"line one\nline \xff two\n", 400, "p.txt is not valid UTF-8 (line 2"),
    ("p.txt", b"\x89PNG\r\n\x1a\n\x00\x00", 415, "p.txt:3: not a text file"),
    ("p.pdf", b"%PDF-1.4", 415, "expected a .txt, .jsonl or .csv"),
    ("p.txt", b"\n---\n \n", 400, "no posting found"),
])
def test_bad_uploads_name_the_problem_and_line(client, name, data, status, msg):
    r = _upload(client, name, data)
    assert r.status_code == status and msg in r.json()["error"], r.text
    assert _upload(client, "ok.txt", b"fine").status_code == 200


def test_upload_over_one_megabyte_is_413(client):
    r = _upload(client, "big.txt", b"a" * ((1 << 20) + 10))
    assert r.status_code == 413
    r = client.post("/api/parse", content=b"text", headers={"content-type": "text/plain"})
    assert r.status_code == 415


def test_parse_upload_direct():
    with pytest.raises(InputError, match=r"x.jsonl:1: .*JSON object"):
        parse_upload("x.jsonl", b"[1, 2]\n")


# ----------------------------------------------------------------------------- queue and load
class GatedRewriter:
    """Blocks in rewrite() until released; records batch sizes."""

    name = "gated"

    def __init__(self):
        self.gate = threading.Event()
        self.calls: list[int] = []

    def rewrite(self, texts):
        self.calls.append(len(texts))
        assert self.gate.wait(30)
        return [t.upper() for t in texts]


def test_full_rewrite_queue_answers_503_with_retry_after_never_hangs():
    rw = GatedRewriter()
    svc = Services(pool=demo_pool(40), rewriter=rw)
    with thread_server(create_app(svc, queue_size=2, batch_size=1)) as url:
        pool = concurrent.futures.ThreadPoolExecutor(4)
        post = lambda: httpx.post(url + "/api/rewrite", json={"text": "lead"}, timeout=30)
        first = pool.submit(post)
        t0 = time.monotonic()
        while not rw.calls and time.monotonic() - t0 < 10:  # the worker holds request 1
            time.sleep(0.01)
        waiting = [pool.submit(post) for _ in range(2)]     # fill the queue (size 2)
        t0 = time.monotonic()
        while httpx.get(url + "/healthz").json()["rewrite_queue"] < 2 and time.monotonic() - t0 < 10:
            time.sleep(0.01)
        t0 = time.monotonic()
        full = post()
        assert time.monotonic() - t0 < 5
        assert full.status_code == 503 and full.headers["retry-after"] == "2"
        assert "queue is full" in full.json()["error"]
        assert httpx.post(url + "/api/score", json={"text": "kind"}).status_code == 200
        rw.gate.set()
        for f in [first] + waiting:
            r = f.result(timeout=30)
            assert r.status_code == 200 and r.json()["rewrite"] == "LEAD"
        pool.shutdown()


def test_rewrite_queue_batches_waiting_requests():
    rw = GatedRewriter()
    q = RewriteQueue(rw.rewrite, maxsize=16, batch_size=4, wait_s=0.05)
    try:
        first = q.submit("a")
        t0 = time.monotonic()
        while not rw.calls and time.monotonic() - t0 < 10:
            time.sleep(0.01)
        rest = [q.submit(c) for c in "bcdefg"]
        rw.gate.set()
        assert [f.result(10) for f in [first] + rest] == list("ABCDEFG")
        assert rw.calls == [1, 4, 2]  # the six that waited went in two batches of <= 4
        with pytest.raises(QueueFull):
            small = RewriteQueue(lambda t: t, maxsize=1)
            small._stop.set()
            small._thread.join()
            small.submit("x")
            small.submit("y")
    finally:
        q.close()


def test_rewriter_errors_reach_every_request_as_500():
    class Broken:
        name = "broken"

        def rewrite(self, texts):
            raise RuntimeError("model exploded")

    app = create_app(Services(pool=demo_pool(40), rewriter=Broken()))
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.post("/api/rewrite", json={"text": "x"})
        assert r.status_code == 500 and "model exploded" in r.json()["error"]
        assert c.get("/healthz").status_code == 200


def test_twenty_concurrent_score_requests_all_succeed(services):
    texts = [f"{POSTING} variant {i} " + ("kind " * (i % 4)) for i in range(20)]
    with thread_server(create_app(services)) as url:
        def one(t):
            return httpx.post(url + "/api/score", json={"text": t}, timeout=60)

        start = threading.Barrier(20)

        def gated(t):
            start.wait()
            return one(t)

        with concurrent.futures.ThreadPoolExecutor(20) as ex:
            got = list(ex.map(gated, texts))
        assert [r.status_code for r in got] == [200] * 20
        for t, r in zip(texts, got):
            assert r.json() == services.score(t)


def test_adapter_loads_fairjax_rewrite_baselines_and_the_shipped_default():
    from fairjax.rewrite import SHIPPED, load_rewriter

    lex = RewriterAdapter.lexicon()
    want = load_rewriter("lexicon_swap")
    assert lex.name == want.name
    texts = ["a competitive leader", "an aggressive plan"]
    assert lex.rewrite(texts) == want.rewrite(texts) != texts
    shipped = RewriterAdapter()
    assert shipped.name == load_rewriter(SHIPPED).name
    assert shipped.rewrite(texts) == load_rewriter(SHIPPED).rewrite(texts)


# ----------------------------------------------------------------------------- CLI
def test_cli_serves_on_localhost_and_prints_the_url():
    with cli_server("--model=lexicon_swap") as (url, proc):
        assert httpx.get(url + "/healthz").json()["status"] == "ok"
        assert httpx.post(url + "/api/score", json={"text": "kind"}).json()["verdict"] == \
            "slightly feminine-coded"
        proc.terminate()
        out, err = proc.communicate(timeout=10)
    assert f"fairjax.serve: {url}/" in out and "demo candidates" in out
    assert "reachable from other machines" not in err


def test_cli_warns_when_bound_beyond_localhost():
    with cli_server("--host=0.0.0.0", "--model=lexicon_swap") as (_url, proc):
        proc.terminate()
        out, err = proc.communicate(timeout=10)
    assert "--host=0.0.0.0" in err and "reachable from other machines" in err


def test_cli_bad_pool_is_one_line_error(tmp_path):
    bad = tmp_path / "pool.jsonl"
    bad.write_text('{"text": "a", "gender": "F"}\n{"text": 3}\n')
    res = subprocess.run([sys.executable, "-m", "fairjax.serve", f"--pool={bad}"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1].startswith("error: ") and f"{bad}:2" in res.stderr
