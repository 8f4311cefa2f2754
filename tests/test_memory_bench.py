"""bench memory: abstract-shape compile, no weights; ILQL (three trunks) needs more than BC."""
import pytest

from fairjax.benchmarks import memory


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_estimates_order_and_state_sizes(family):
    est = {a: memory.estimate(family, "tiny", a, 2, 32, "float32", "none") for a in ("bc", "ilql")}
    bc, ilql = est["bc"], est["ilql"]
    # ILQL trains the Q/V trunk + heads and keeps target (and the frozen policy) trunks
    assert ilql["params_bytes"] > bc["params_bytes"]
    assert ilql["frozen_bytes"] >= bc["params_bytes"]
    assert bc["frozen_bytes"] == 0
    assert bc["opt_state_bytes"] >= 2 * bc["params_bytes"]  # AdamW moments
    assert ilql["peak_estimate_bytes"] > bc["peak_estimate_bytes"] > bc["params_bytes"]
