"""Sequence packing (`fairjax/data/packing.py`, `data.pack`): several episodes per row with
segment-masked attention and per-episode positions. The packed rows' layout indices select the
same tokens/rewards/terminals as the unpacked layout; packed logits equal the unpacked ones per
episode (GPT-2 fixture, LLaMA preset; xla and the jax.nn.dot_product_attention path); BC and ILQL
losses and gradients equal the unpacked ones; config validation names `data.pack`; a BC run trains
on packed rows, which are fuller."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fairjax.agents import ilql as IA
from fairjax.agents import lm as LMA
from fairjax.data import packing
from fairjax.data.demo import make_postings
from fairjax.data.layout import Truncation, collate, layout
from fairjax.data.jobs import DataError
from fairjax.errors import ConfigError
from fairjax.losses.bc import BCHparams
from fairjax.losses.ilql import ILQLHparams
from fairjax.models import gpt2, llama

from trainer_fixtures import small_config


@pytest.fixture(scope="module")
def tiny(fixtures_dir):
    from fairjax.io.loader import load

    module, params, tok = load(str(fixtures_dir / "gpt2_tiny" / "hf"))
    return module, params, tok


def demo_episodes(tok, n: int, seed: int = 0, max_tokens: int = 60):
    """Short single- and multi-turn episodes cut from the demo corpus (lengths vary)."""
    rng = np.random.default_rng(seed)
    texts = [p["text"].split() for p in make_postings(n, seed=seed, with_rewards=True)]
    eps = []
    for i, words in enumerate(texts):
        cut = lambda: " ".join(words[rng.integers(0, 20):][:rng.integers(1, 12)])  # noqa: E731
        seq = [(cut(), None), (cut(), float(rng.normal()))]
        if i % 3 == 0:  # env / agent / env / agent: two action spans
            seq += [(cut(), None), (cut(), float(rng.normal()))]
        eps.append(layout(tok, seq, True, token_reward=0.1 * (i % 2),
                          truncation=Truncation(max_len=max_tokens)))
    return eps


def _packed(eps, pad_id, max_len):
    rows = packing.pack(eps, max_len)
    return rows, packing.collate_packed(rows, pad_id)


def _spans(row):
    """(episode index, token offset, state-slot offset) per segment of a PackedRow."""
    starts = np.flatnonzero(np.diff(row.segment_ids, prepend=0) != 0)  # first token per segment
    ends = np.flatnonzero(row.terminals == 1) + 1  # one past each episode's final state slot
    return list(zip(row.episodes, starts, np.concatenate([[0], ends[:-1]])))


def test_packer_indices_select_what_the_unpacked_layout_selects(tiny):
    _, _, tok = tiny
    eps = demo_episodes(tok, 30)
    max_len = 2 * max(e.length for e in eps)
    rows, b = _packed(eps, tok.pad_id, max_len)
    assert sorted(i for r in rows for i in r.episodes) == list(range(len(eps)))
    assert len(rows) < len(eps) and all(r.length <= max_len for r in rows)
    for r, row in enumerate(rows):
        spans = _spans(row)
        assert len(spans) == len(row.episodes)
        n_valid = 0
        for k, (i, off, slot) in enumerate(spans):
            e, n, s = eps[i], eps[i].length, eps[i].num_states
            sl = slice(off, off + n)
            np.testing.assert_array_equal(b["tokens"][r, sl], e.tokens)
            np.testing.assert_array_equal(b["segment_ids"][r, sl], k + 1)
            np.testing.assert_array_equal(b["positions"][r, sl], np.arange(n))
            np.testing.assert_array_equal(b["attn_mask"][r, sl], 1.0)
            # states / actions of episode i, read through the packed row
            st = b["state_idxs"][r, slot:slot + s]
            np.testing.assert_array_equal(b["tokens"][r, st], e.tokens[e.state_idxs])
            np.testing.assert_array_equal(st - off, e.state_idxs)
            np.testing.assert_array_equal(b["terminals"][r, slot:slot + s], e.terminals)
            act = b["action_idxs"][r, slot:slot + s - 1]
            np.testing.assert_array_equal(act - off, e.action_idxs)
            np.testing.assert_array_equal(b["tokens"][r, act + 1], e.tokens[e.action_idxs + 1])
            np.testing.assert_array_equal(b["rewards"][r, slot:slot + s - 1], e.rewards)
            n_valid += int(np.sum(1 - e.terminals[:-1]))
        # action slot t is valid iff state t is not terminal: the filler slots (and padding) are
        # masked, so the row's valid actions are exactly its episodes' actions
        assert int(np.sum(1 - b["terminals"][r, :-1])) == n_valid
        assert b["action_idxs"].shape[1] == b["state_idxs"].shape[1] - 1
        np.testing.assert_array_equal(b["segment_ids"][r, row.length:], 0)
        np.testing.assert_array_equal(b["attn_mask"][r, row.length:], 0.0)


def test_packer_refuses_non_terminal_and_too_long_episodes(tiny):
    _, _, tok = tiny
    open_ep = layout(tok, [("a prompt", None), ("a reply", 1.0)], False)
    with pytest.raises(ValueError, match="not terminal"):
        packing.pack([open_ep, open_ep], 64)
    with pytest.raises(ValueError, match="max_len=4"):
        packing.pack([open_ep], 4)


def _unpacked(eps, pad_id, width):
    return collate(eps, pad_id, pad_to=width)


def _segment_logits(out, rows, eps, b):
    """{episode index: its logits [n, V] read from a packed batch's output}."""
    got = {}
    for r, row in enumerate(rows):
        for i, off, _ in _spans(row):
            got[i] = np.asarray(out[r, off:off + eps[i].length])
    return got


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
@pytest.mark.parametrize("impl", ["xla", "auto"])
def test_packed_logits_equal_unpacked_per_episode(tiny, kind, impl):
    _, gparams, tok = tiny
    if kind == "gpt2":
        mcfg = tiny[0].config.replace(attention_impl=impl)
        params = gparams
    else:
        mcfg = llama.PRESETS["tiny"].replace(attention_impl=impl)
        params = llama.init_params(mcfg, jax.random.PRNGKey(1))
    model = (gpt2 if kind == "gpt2" else llama).Model(mcfg)
    eps = demo_episodes(tok, 12, seed=1)
    rows, b = _packed(eps, tok.pad_id, 128)
    assert max(len(r.episodes) for r in rows) > 1
    apply = jax.jit(lambda *a, **k: model.apply({"params": params}, *a, **k).logits)
    packed = apply(b["tokens"], b["attn_mask"], b["positions"], segment_ids=b["segment_ids"])
    # positions derived from the segments when not given
    derived = apply(b["tokens"], b["attn_mask"], segment_ids=b["segment_ids"])
    real = b["segment_ids"] > 0  # (padding positions differ and are never read)
    np.testing.assert_array_equal(np.asarray(derived)[real], np.asarray(packed)[real])
    u = _unpacked(eps, tok.pad_id, max(e.length for e in eps))
    ref = np.asarray(apply(u["tokens"], u["attn_mask"]))
    got = _segment_logits(packed, rows, eps, b)
    assert sorted(got) == list(range(len(eps)))
    for i, e in enumerate(eps):
        np.testing.assert_allclose(got[i], ref[i, :e.length], rtol=1e-5, atol=1e-5)


def test_segment_mask_is_block_diagonal_causal():
    from fairjax.models.common import attention_mask_and_positions, segment_position_ids

    seg = jnp.asarray([[1, 1, 2, 2, 2, 0], [1, 1, 1, 1, 1, 1]])
    mask, pos, _ = attention_mask_and_positions(jnp.zeros((2, 6), jnp.int32),
                                                (seg > 0).astype(jnp.int32), None, None, seg)
    m = np.asarray(mask[:, 0])
    s = np.asarray(seg)
    want = ((s[:, :, None] == s[:, None, :]) & (s[:, None, :] > 0)
            & (np.arange(6)[None, None, :] <= np.arange(6)[None, :, None]))
    want[0, 5, 5] = True  # a padding query attends to its own slot (no NaN rows)
    np.testing.assert_array_equal(m, want)
    np.testing.assert_array_equal(np.asarray(pos), [[0, 1, 0, 1, 2, 0], [0, 1, 2, 3, 4, 5]])
    np.testing.assert_array_equal(np.asarray(segment_position_ids(seg)), np.asarray(pos))


def _loss_and_grads(loss, params, batch):
    return jax.jit(jax.value_and_grad(loss, has_aux=True))(
        params, {k: jnp.asarray(v) for k, v in batch.items()})


def _assert_tree_close(a, b, rtol=1e-5):
    """Leafwise equal within rtol, entries near 0 measured against the leaf's largest entry
    (float32 sums in another order)."""
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        y = np.asarray(y)
        np.testing.assert_allclose(np.asarray(x), y, rtol=rtol, atol=rtol * np.abs(y).max())


@pytest.mark.parametrize("hp,chunk", [(BCHparams(), 0), (BCHparams(normalize="per_token"), 64),
                                      (BCHparams(transition_weight=0.5), 64)],
                         ids=["upstream-dense", "per_token-chunked", "transition-chunked"])
def test_bc_loss_and_grads_packed_equal_unpacked(tiny, hp, chunk):
    module, params, tok = tiny
    eps = demo_episodes(tok, 16, seed=2)
    rows, b = _packed(eps, tok.pad_id, 128)
    u = _unpacked(eps, tok.pad_id, max(e.length for e in eps))
    cfg = LMA.LMConfig(hparams=hp, vocab_chunk=chunk)
    loss = lambda p, batch: LMA.loss_fn(module, cfg, p, batch)  # noqa: E731
    (lp, mp), gp = _loss_and_grads(loss, params, b)
    (lu, mu), gu = _loss_and_grads(loss, params, u)
    assert len(rows) < len(eps)
    np.testing.assert_allclose(float(lp), float(lu), rtol=1e-5)
    for k in ("n_tokens", "n_actions"):
        assert float(mp[k]) == float(mu[k]), k
    _assert_tree_close(gp, gu)


def test_bc_lora_packed_equals_unpacked(tiny):
    """The factored LoRA wrapper forwards segment_ids / positions to the base model."""
    from fairjax.agents.lora import loraize
    from fairjax.models.lora import LoraConfig

    module, params, tok = tiny
    algo = loraize(lambda m, lm: LMA.make_algorithm(m, LMA.LMConfig(vocab_chunk=64), lm), module,
                   params, LoraConfig(rank=4), "gpt2")
    p, f = algo.init(jax.random.PRNGKey(0))
    eps = demo_episodes(tok, 12, seed=4)
    _, b = _packed(eps, tok.pad_id, 128)
    u = _unpacked(eps, tok.pad_id, max(e.length for e in eps))
    loss = lambda q, batch: algo.loss(q, f, batch, None)  # noqa: E731
    (lp, _), gp = _loss_and_grads(loss, p, b)
    (lu, _), gu = _loss_and_grads(loss, p, u)
    np.testing.assert_allclose(float(lp), float(lu), rtol=1e-5)
    _assert_tree_close(gp, gu)


@pytest.mark.parametrize("awac,chunk", [
    (0.0, 64), pytest.param(0.5, 0, marks=pytest.mark.slow)],  # dense: ~15-27 s on 2 cores
    ids=["chunked", "awac-dense"])
def test_ilql_loss_and_grads_packed_equal_unpacked(tiny, awac, chunk):
    module, params, tok = tiny
    hp = ILQLHparams(awac_weight=awac, beta=1.0, dm_weight=0.1, dm_margin=0.2, transition_weight=0.3)
    cfg = IA.ILQLConfig(hparams=hp, vocab_chunk=chunk)
    mc = module.config
    p, f = IA.init_from_bc(cfg, params, params, jax.random.PRNGKey(0), mc.hidden_size,
                           mc.vocab_size)
    eps = demo_episodes(tok, 16, seed=3)
    rows, b = _packed(eps, tok.pad_id, 128)
    u = _unpacked(eps, tok.pad_id, max(e.length for e in eps))
    loss = lambda q, batch: IA.loss_fn(module, cfg, q, f, batch)  # noqa: E731
    (lp, mp), gp = _loss_and_grads(loss, p, b)
    (lu, mu), gu = _loss_and_grads(loss, p, u)
    assert len(rows) < len(eps)
    for k in mu:
        np.testing.assert_allclose(float(mp[k]), float(mu[k]), rtol=1e-5, atol=1e-6, err_msg=k)
    assert float(mp["n_valid"]) == float(mu["n_valid"]) > 0
    _assert_tree_close(gp, gu)


@pytest.mark.parametrize("algo,extra,match", [
    ("alol", {}, r"config\.data\.pack=True.*'alol'"),
    ("dpo", {}, r"config\.data\.pack=True.*'dpo'"),
    ("ilql", {"ilql.mc_returns": True}, r"config\.data\.pack=True.*mc_returns")])
def test_pack_is_refused_where_the_layout_does_not_carry_over(algo, extra, match):
    from fairjax.train.build import validate_config

    cfg = small_config(algo, **{"data.pack": True}, **extra)
    with pytest.raises(ConfigError, match=match):
        validate_config(cfg)
    for name in ("bc", "ilql"):
        validate_config(small_config(name, **{"data.pack": True}))


def _write_short_postings(path, n, seed=0):
    import json

    rng = np.random.default_rng(seed)
    with open(path, "w") as fh:
        for p in make_postings(n, seed=seed, with_rewards=True):
            words = p["text"].split()
            p["text"] = " ".join(words[:rng.integers(4, 30)])
            fh.write(json.dumps(p) + "\n")


@pytest.mark.slow  # ~25 s on 2 CPU cores: two data builds (demo BPE) and a 2-step BC run
def test_bc_trains_on_packed_rows_which_are_fuller(tmp_path):
    """data.pack=True through `build_data`: fewer, fuller rows per epoch; a BC run trains.
    (The job prompt template alone is ~250 demo-BPE tokens, so rows of 1024 hold ~3 episodes.)"""
    from fairjax.train.build import build_setup, train

    train_path, eval_path = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    _write_short_postings(train_path, 64)
    _write_short_postings(eval_path, 8, seed=1)
    over = {"data.train": str(train_path), "data.eval": str(eval_path), "data.max_len": 1024,
            "data.buckets": (256, 512, 1024), "train.steps": 2,
            "train.eval_every": 0, "train.save_every": 2, "train.log_every": 1,
            "optim.batch_size": 4}
    stats = {}
    for pack in (False, True):
        cfg = small_config("bc", **over, **{"data.pack": pack})
        (tmp_path / f"setup{pack}").mkdir()
        setup = build_setup(cfg, tmp_path / f"setup{pack}")
        it = setup.train_data
        real = padded = 0
        batches = [next(it) for _ in range(setup.steps_per_epoch)]
        for bt in batches:
            real += float(bt["attn_mask"].sum())
            padded += bt["tokens"].size
            assert ("segment_ids" in bt) == pack
        stats[pack] = dict(steps=setup.steps_per_epoch, fill=real / padded, real=real)
        if pack:
            assert any(bt["segment_ids"].max() > 1 for bt in batches)
            assert next(setup.eval_data())["tokens"].shape[0] == 4  # eval stays unpacked
    assert stats[True]["steps"] < stats[False]["steps"]
    assert stats[True]["fill"] > stats[False]["fill"]
    res = train(small_config("bc", **over, **{"data.pack": True}), tmp_path / "run")
    assert res.step == 2 and np.isfinite(res.metrics["loss"])
    # fewer packed rows than one step's rows: a DataError naming the keys, not a bare shape error
    (tmp_path / "big").mkdir()
    big = small_config("bc", **{**over, "data.pack": True, "optim.batch_size": 48})
    with pytest.raises(DataError, match=r"data\.pack=True packs \d+ episodes into \d+ rows"):
        build_setup(big, tmp_path / "big")
