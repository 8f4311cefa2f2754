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


def test_shared_base_lora_ilql_needs_less_than_full():
    full = memory.estimate("llama", "tiny", "ilql", 2, 32, "bfloat16", "block")
    lora = memory.estimate("llama", "tiny", "ilql_lora", 2, 32, "bfloat16", "block")
    assert lora["params_bytes"] < full["params_bytes"]  # adapters + heads only (no Q/V trunk)
    assert lora["opt_state_bytes"] < full["opt_state_bytes"]
    assert lora["peak_estimate_bytes"] < full["peak_estimate_bytes"]
    assert lora["frozen_bytes"] < full["frozen_bytes"]  # one bf16 base instead of two f32 trunks
