"""Comparisons shared by the conversion and loading tests."""
import jax
import numpy as np


def reference_logits(model, params, ref):
    """Logits for the reference inputs with positions arange(T), as the fixtures were made."""
    ids, mask = ref["input_ids"], ref["attention_mask"]
    pos = np.broadcast_to(np.arange(ids.shape[1]), ids.shape)
    out = jax.jit(model.apply)({"params": params}, ids, mask, pos)
    return np.asarray(out.logits)


def assert_trees_equal(a, b):
    fa, fb = jax.tree_util.tree_flatten_with_path(a)[0], jax.tree_util.tree_flatten_with_path(b)[0]
    assert [p for p, _ in fa] == [p for p, _ in fb]
    for (path, x), (_, y) in zip(fa, fb):
        assert np.asarray(x).dtype == np.asarray(y).dtype, path
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=str(path))
