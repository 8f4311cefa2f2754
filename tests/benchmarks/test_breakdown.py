"""benchmarks/breakdown.py: the per-category split of a compiled train step is checked against
XLA's own totals and against analytic FLOP counts, and the vocabulary head's share shrinks with
chunked heads. Tiny GPT-2 (d=64, 4d=256, L=2, V=1006), BC, B x T = 8 x 64, float32, remat=none.

Tolerances: FLOPs and transcendentals with each while body counted once equal XLA's
`cost_analysis()` within 0.1% (the same per-op rules; XLA does not multiply loop bodies by their
trip count); bytes accessed within 0.1% without loops, 10% with the chunked heads' loops (XLA
counts a while loop's bytes its own way); the liveness walk's peak temporaries lie between 0.99x
and 2.5x XLA's `memory_analysis().temp_size_in_bytes` (it reuses a buffer only when an operand
dies into a same-sized output, XLA's heap simulator packs tighter; it is a model of the schedule,
not XLA's assignment, and with the optimiser update inside a `conditional` XLA reports 0.2% more
than the walk on the unchunked step)."""
import math

import pytest

from fairjax.benchmarks import breakdown, memory

pytestmark = pytest.mark.slow  # two tiny compiles: ~40 s idle, ~100 s on the shared 2 cores

B, T, V, D, L = 8, 64, 1006, 64, 2
CHUNK = 200  # V = 5 x 200 + 6: remainder block; 200 and 6 are no other axis length here


def _step(monkeypatch, chunk):
    monkeypatch.setenv("FAIRJAX_VOCAB_CHUNK", str(chunk))
    compiled, _ = memory.compile_step("gpt2", "tiny", "bc", B, T, "float32", "none")
    return breakdown.analyze(compiled, breakdown.vocab_dims(V, chunk))


@pytest.fixture(scope="module")
def results():
    mp = pytest.MonkeyPatch()
    try:
        return {c: _step(mp, c) for c in (0, CHUNK)}
    finally:
        mp.undo()


def _cat(r, name):
    return next(row for row in r["rows"] if row["category"] == name)


@pytest.mark.parametrize("chunk", [0, CHUNK])
def test_categories_sum_to_xla_totals(results, chunk):
    r = results[chunk]
    for key in ("flops", "bytes", "temp_bytes"):
        total = {"flops": r["flops"], "bytes": r["bytes"], "temp_bytes": r["temp_peak"]}[key]
        assert math.isclose(sum(row[key] for row in r["rows"]), total, rel_tol=1e-9)
    assert math.isclose(r["flops_loops_once"], r["xla_flops"], rel_tol=1e-3)
    assert math.isclose(r["bytes_loops_once"], r["xla_bytes"], rel_tol=1e-3 if chunk == 0 else 0.1)
    assert 0.99 * r["xla_temp"] <= r["temp_peak"] <= 2.5 * r["xla_temp"]
    if chunk == 0:  # no loops: trip counts change nothing
        assert math.isclose(r["flops"], r["xla_flops"], rel_tol=1e-3)
        assert math.isclose(r["transcendentals"], r["xla_transcendentals"], rel_tol=1e-3)
    else:  # the vocabulary loop runs 5 times: counted with its trip count, more than XLA's
        assert r["flops"] > 1.2 * r["xla_flops"]


@pytest.mark.parametrize("chunk", [0, CHUNK])
def test_matmul_categories_match_analytic_counts(results, chunk):
    """Forward + backward (dx and dW) = 3x the forward's matmul FLOPs, every layer."""
    r, n = results[chunk], B * T
    mlp = 3 * L * 2 * n * (D * 4 * D) * 2                 # c_fc and c_proj
    attn = 3 * L * (2 * n * D * 3 * D + 2 * n * D * D      # c_attn and c_proj
                    + 2 * 2 * B * T * T * D)               # scores and context
    assert _cat(r, "MLP matmuls")["flops"] == mlp
    assert _cat(r, "attention matmuls")["flops"] == attn
    # tied LM head: logits, dx and dW over the vocabulary (at least 3 matmuls of n x D x V)
    assert _cat(r, "vocab head / CE")["flops"] >= 3 * 2 * n * D * V
    assert _cat(r, "Q/V heads")["flops"] == 0 and _cat(r, "collectives")["flops"] == 0
    assert _cat(r, "optimizer update")["flops"] > 0


def test_chunked_heads_shrink_the_vocab_head_temporaries(results):
    dense, chunked = (_cat(results[c], "vocab head / CE") for c in (0, CHUNK))
    assert dense["temp_bytes"] >= 2 * B * T * V * 4  # [N, V] float32 scores kept: >= 2 live
    assert chunked["temp_bytes"] < 0.5 * dense["temp_bytes"]
    assert results[CHUNK]["temp_peak"] < results[0]["temp_peak"]


def test_parse_rejects_text_without_entry():
    with pytest.raises(ValueError, match="no ENTRY"):
        breakdown.parse("HloModule m\n")
