"""The architecture's rules, checked: no import circle among fairjax modules (AST, top-level and
in-function imports), no objective named in the generic layers, a new objective is one module +
one config, every objective (offline and online) trains with LoRA through the one
transformation (`agents.lora.loraize`), and tokens/s counts what an objective declares (DPO: both rows)."""
from __future__ import annotations

import ast
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ast_helpers import flag_definitions
from trainer_fixtures import small_config

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "fairjax"


# ----------------------------------------------------------------------------- import graph
def _modules() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """fairjax module -> the fairjax modules it imports anywhere in its source."""
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                # `from a import b`: a.b when b is a module, else a
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base
                         for a in node.names]
            for n in names:
                while n and n not in mods:  # `import a.b.c` of a non-module attribute
                    n = n.rpartition(".")[0]
                if n and n != mod and n.startswith("fairjax"):
                    graph[mod].add(n)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import circle (as a path a -> ... -> a), or [] when there is none."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state:
                c = visit(n)
                if c:
                    return c
        stack.pop()
        state[m] = 2
        return []

    for m in sorted(graph):
        if m not in state:
            c = visit(m)
            if c:
                return c
    return []


def test_find_cycle_detects_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []


def test_no_import_circle_among_fairjax_modules():
    graph = import_graph()
    assert "fairjax.agents.base" in graph["fairjax.agents.dpo"]  # the walk sees imports
    cycle = find_cycle(graph)
    assert not cycle, "import circle: " + " -> ".join(cycle)


# ----------------------------------------------------------------------------- flags only in cli/
def test_flag_check_finds_definitions():
    src = ("from absl import flags\nfrom ml_collections import config_flags\n"
           "def define():\n    flags.DEFINE_string('x', None, 'x')\n"
           "    config_flags.DEFINE_config_file('config')\n    flags.mark_flags_as_required(['x'])\n")
    assert len(flag_definitions(src)) == 5
    assert flag_definitions("from absl import app, logging\nlogging.info('flags')\n") == []


def test_library_modules_define_no_flags():
    """Flag parsing lives in fairjax/cli/ (one module per program); every other module is a
    library that takes its settings as arguments."""
    bad = {m: h for m, p in _modules().items()
           if m.split(".")[:2] != ["fairjax", "cli"] and (h := flag_definitions(p.read_text(encoding="utf-8")))}
    assert not bad, bad


# ----------------------------------------------------------------------------- generic layers
GENERIC = ["fairjax/train/build.py", "fairjax/train/loop.py", "fairjax/evaluate/__init__.py",
           "fairjax/pipeline.py", "fairjax/rewards/training.py", "fairjax/rewards/registry.py",
           "fairjax/data/episodes.py", "fairjax/generate.py"]
OBJECTIVE_MODULES = {"ilql", "lm", "alol", "alol_value", "phf", "dpo", "online_objectives"}


def _is_config(node) -> bool:
    """`cfg...` / `config...` / `run.config...`: a run config (or a pipeline stage's result dict
    such as `stages[...]`, which is not)."""
    while isinstance(node, (ast.Attribute, ast.Subscript, ast.Call)):
        if isinstance(node, ast.Attribute) and "config" in node.attr:
            return True
        node = node.func if isinstance(node, ast.Call) else node.value
    return isinstance(node, ast.Name) and ("cfg" in node.id or "config" in node.id)


def objective_mentions(source: str, names: set[str]) -> list[str]:
    """Places where code picks an objective by name: comparisons with a name, any attribute
    `x.<name>` (a config block, or a per-objective builder such as `Policy.<name>`),
    `cfg["<name>"]` config blocks, and imports of an objective's module."""
    hits = []

    def strings(node):
        return {n.value for n in ast.walk(node) if isinstance(n, ast.Constant)
                and isinstance(n.value, str)}

    for node in ast.walk(ast.parse(source)):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Compare):
            found = strings(node) & names
            hits += [f"line {line}: compares with {sorted(found)}"] if found else []
        elif isinstance(node, ast.Attribute) and node.attr in names:
            hits.append(f"line {line}: .{node.attr}")
        elif (isinstance(node, ast.Subscript) and _is_config(node.value)
              and strings(node.slice) & names):
            hits.append(f"line {line}: [{sorted(strings(node.slice) & names)}]")
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            mods = ([node.module or ""] if isinstance(node, ast.ImportFrom) else []) + [
                a.name for a in node.names]
            bad = [m for m in mods if m.rpartition(".")[2] in OBJECTIVE_MODULES
                   or m.startswith(tuple(f"fairjax.agents.{o}" for o in OBJECTIVE_MODULES))]
            hits += [f"line {line}: imports {bad}"] if bad else []
    return hits


def test_mention_check_finds_objective_branches():
    src = ('if cfg.algorithm == "ilql":\n    g = cfg.ilql.generation\n'
           'x = cfg["dpo"]\nfrom fairjax.agents.ilql import ILQLConfig\n'
           'p = Policy.ilql(module)\ny = stages["dpo"]\n')
    assert len(objective_mentions(src, {"ilql", "dpo"})) == 5


def test_generic_layers_name_no_objective():
    from fairjax.agents import registry

    names = set(registry.names())
    bad = {p: h for p in GENERIC
           if (h := objective_mentions((ROOT / p).read_text(encoding="utf-8"), names))}
    assert not bad, bad


# ----------------------------------------------------------------------------- a toy objective
def test_toy_objective_is_one_module_and_one_config(tmp_path):
    """A new objective registered from here (its module) with its config block trains two steps
    through the ordinary `train` (build, data, loop), reading only its declared capabilities."""
    import dataclasses

    import flax.linen as nn

    from fairjax.agents import registry
    from fairjax.agents.base import Algorithm, identity_update, lm_forward, target_mask
    from fairjax.train.build import train

    # --- the module: a response-token NLL scaled by config.toy_nll.scale
    def loss_fn(model: nn.Module, scale: float, params, batch, rng):
        logp, _ = lm_forward(model, params, batch["tokens"], batch["attn_mask"])  # [B, T-1]
        mask = target_mask(batch, batch["tokens"].shape[1]) * batch["attn_mask"][:, 1:]
        nll = -jnp.sum(logp * mask) / jnp.maximum(jnp.sum(mask), 1.0)
        return scale * nll, {"nll": nll}

    @dataclasses.dataclass(frozen=True)
    class ToyConfig:
        scale: float = 1.0

    def agent_config(cfg):
        return registry.config_block(cfg, "toy_nll", ToyConfig)

    def build(cfg, module, model_config, base, policy):
        scale = float(cfg.toy_nll.scale)
        return Algorithm(name="toy_nll",
                         init=lambda rng: (policy(rng) if callable(policy) else policy, {}),
                         loss=lambda p, f, b, r: loss_fn(module, scale, p, b, r),
                         update_frozen=identity_update, policy=lambda p, f: (module, p))

    obj = registry.register(registry.Objective(name="toy_nll", agent_config=agent_config,
                                               build=build, trains_on_reward=False))
    try:
        # --- the config: the shared base + its own block
        cfg = small_config("bc", **{"train.steps": 2, "train.eval_every": 0,
                                    "train.save_every": 2, "data.demo_postings": 24})
        cfg.unlock()
        cfg.algorithm = "toy_nll"
        del cfg["bc"]
        cfg.toy_nll = {"scale": 2.0}
        cfg.lock()
        res = train(cfg, tmp_path)
        assert res.step == 2
        import json

        rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
        train_rows = [r for r in rows if r["split"] == "train"]
        assert train_rows and all(abs(r["loss"] - 2.0 * r["nll"]) < 1e-4 * abs(r["loss"])
                                  for r in train_rows)
    finally:
        registry._REGISTRY.pop(obj.name, None)


# ----------------------------------------------------------------------------- tokens/s
def test_dpo_counts_chosen_and_rejected_tokens():
    from fairjax.agents import registry

    batch = {"chosen_tokens": np.zeros((2, 4), np.int32),
             "chosen_attn_mask": np.array([[1, 1, 1, 0], [1, 1, 0, 0]], np.float32),
             "rejected_tokens": np.zeros((2, 4), np.int32),
             "rejected_attn_mask": np.array([[1, 0, 0, 0], [1, 1, 1, 0]], np.float32)}
    assert registry.get("dpo").count_tokens(batch) == 5 + 4  # not 2 x the chosen 5
    batch["rejected_attn_mask"][1] = 0
    assert registry.get("dpo").count_tokens(batch) == 5 + 1
    assert registry.get("bc").count_tokens({"attn_mask": np.ones((2, 3))}) == 6


# ----------------------------------------------------------------------------- LoRA
def _tiny_gpt2():
    from fairjax.models import gpt2

    mcfg = gpt2.PRESETS["tiny"]
    return gpt2.GPT2LMHeadModel(mcfg), gpt2.init_params(mcfg, jax.random.PRNGKey(0)), mcfg


def _dpo_batch(vocab):
    rng = np.random.default_rng(1)
    T = 12
    b = {}
    for p in ("chosen_", "rejected_"):
        b[p + "tokens"] = rng.integers(0, vocab - 6, (2, T)).astype(np.int32)
        b[p + "attn_mask"] = np.ones((2, T), np.float32)
        b[p + "response_mask"] = np.concatenate([np.zeros((2, 6)), np.ones((2, 6))], 1
                                                ).astype(np.float32)
    return b


@pytest.mark.parametrize("algo", ["phf", "dpo"])
def test_phf_and_dpo_train_with_lora_equal_to_the_merged_form(algo):
    """`lora.enabled`: params are adapters (+ PHF's value head) only, the base is frozen, and the
    factored loss equals the objective's own loss on the merged params (reference = the base)."""
    from fairjax.agents import registry
    from fairjax.benchmarks.train import synthetic_batch

    module, base, mcfg = _tiny_gpt2()
    cfg = small_config(algo, **{"lora.enabled": True, "lora.rank": 2,
                                "lora.base_dtype": "float32"})
    alg = registry.build_algorithm(cfg, module, mcfg, base)
    params, frozen = alg.init(jax.random.PRNGKey(0))
    lm_ad = params["lm"] if algo == "phf" else params
    assert set(frozen) >= {"base"} and all(set(v) == {"a", "b"} for v in lm_ad.values())
    # move B off zero so that the adapters matter
    params = jax.tree_util.tree_map_with_path(
        lambda path, x: x + 0.05 * jax.random.normal(jax.random.PRNGKey(3), x.shape)
        if str(path[-1].key) == "b" else x, params)
    if algo == "phf":
        batch = synthetic_batch(2, 12, mcfg.vocab_size)
        batch["token_scores"] = np.random.default_rng(0).normal(size=(2, 12)).astype(np.float32)
    else:
        batch = _dpo_batch(mcfg.vocab_size)
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    loss, _ = alg.loss(params, frozen, batch, None)
    full = registry.get(algo).build(cfg, module, mcfg, base, base)
    mp, mf = alg.merged(params, frozen)
    mf = {k: v for k, v in mf.items() if k != "base"}
    ref_loss, _ = full.loss(mp, mf, batch, None)
    np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-5, atol=1e-6)
    g = jax.grad(lambda p: alg.loss(p, frozen, batch, None)[0])(params)
    g_ad = g["lm"] if algo == "phf" else g
    assert any(float(jnp.abs(v["a"]).max()) > 0 for v in g_ad.values())
    if algo == "dpo":  # the reference is the base with adapters disabled
        np.testing.assert_allclose(
            np.asarray(jax.tree.leaves(mf["ref"])[0]),
            np.asarray(jax.tree.leaves(base)[0]), rtol=0, atol=0)


class _ToyTok:
    bos_id, eos_id, eoa_id, pad_id = 12, 13, 14, 15

    def decode(self, ids):
        return " ".join(str(i) for i in ids)


@pytest.mark.slow  # a rollout + two compiled steps per objective (~1 min on the contended CPU)
@pytest.mark.parametrize("algo", ["grpo", "rloo", "ppo"])
def test_online_objectives_train_with_lora_through_loraize(algo):
    """`lora.enabled` for GRPO / RLOO / PPO goes through the same `loraize`: params are adapter
    sets (+ PPO's value head; PPO's separate value trunk is an adapter set too), the base and the
    reference (a copy of the fresh adapters) stay frozen, a short run moves only the adapters
    (and head), the rollout reads the merged view, and the loss equals the objective's own loss
    on the merged params."""
    import optax

    from fairjax.agents import online as O
    from fairjax.agents import registry
    from fairjax.agents.online_objectives import online_config
    from fairjax.models import gpt2

    mcfg = gpt2.GPT2Config(vocab_size=16, hidden_size=32, num_layers=1, num_heads=2,
                           max_positions=32)
    module, base = gpt2.GPT2LMHeadModel(mcfg), gpt2.init_params(mcfg, jax.random.PRNGKey(0))
    over = {"lora.enabled": True, "lora.rank": 2, "lora.base_dtype": "float32",
            "optim.batch_size": 8, f"{algo}.group_size": 4, f"{algo}.max_prompt_tokens": 4,
            f"{algo}.max_new_tokens": 6}
    if algo == "ppo":
        over.update({"ppo.value_trunk": "separate", "ppo.epochs": 1, "ppo.minibatches": 2})
    cfg = small_config(algo, **over)
    alg = registry.build_algorithm(cfg, module, mcfg, base)
    assert alg.name == f"{algo}_lora"
    score = lambda texts: np.array([t.split().count("3") for t in texts], float)  # noqa: E731
    rl = O.OnlineRL(O.PolicyParts(module), online_config(cfg, algo), _ToyTok(), score,
                    optax.adam(3e-2), algorithm=alg)
    st0 = jax.device_get(rl.init_state(None, jax.random.PRNGKey(1)))
    trunks = {"policy", "value_lm"} if algo == "ppo" else {"policy"}
    assert set(st0["params"]) == trunks | ({"value_head"} if algo == "ppo" else set())
    assert all(set(ad) == {"a", "b"} for t in trunks for ad in st0["params"][t].values())
    assert set(st0["frozen"]) == {"base", "ref"}
    st = st0
    prompts = [np.array([12, 1, 13]), np.array([12, 2, 5, 13])]
    for _ in range(2):
        st, m, _ = rl.step(st, prompts, ["a", "b"])
        assert m["finite"] == 1.0 and np.isfinite(m["loss"])
    st = jax.device_get(st)
    same = lambda a, b: jax.tree.all(jax.tree.map(lambda x, y: bool(np.all(x == y)), a, b))  # noqa: E731
    assert same(st["frozen"], st0["frozen"])  # base and reference frozen
    assert same(st["frozen"]["base"], base)
    for t in trunks:  # B moved off zero: the adapters trained
        assert any(np.any(ad["b"] != 0) for ad in st["params"][t].values()), t
    # the loss is the objective's own on the merged trees (factored == merged)
    batch, _ = rl.rollout(st, prompts, ["a", "b"])
    rows = len(batch["seq"]) // rl.rollout.updates
    first = {k: jnp.asarray(v[:rows]) for k, v in batch.items()}
    loss, _ = alg.loss(st["params"], st["frozen"], first, None)
    full = registry.get(algo).build(cfg, module, mcfg, base, base)
    mp, mf = alg.merged(st["params"], st["frozen"])
    ref_loss, _ = full.loss(mp, mf, first, None)
    np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------- one definition
def test_validation_allows_exactly_the_implemented_choices():
    """validate_config takes the remat policies / attention kernels the models implement."""
    from fairjax.errors import ConfigError
    from fairjax.models.common import ATTENTION_IMPLS, REMAT_POLICIES
    from fairjax.train.build import validate_config

    for remat in REMAT_POLICIES:  # main allowed only none | block | dots
        validate_config(small_config("bc", **{"model.remat": remat}))
    for impl in ATTENTION_IMPLS:
        validate_config(small_config("bc", **{"model.attention": impl}))
    with pytest.raises(ConfigError, match=r"config.model.remat='bogus'.*offload"):
        validate_config(small_config("bc", **{"model.remat": "bogus"}))
    with pytest.raises(ConfigError, match=r"config.model.attention='flash'"):
        validate_config(small_config("bc", **{"model.attention": "flash"}))


def test_configs_import_no_fairjax_runtime_module():
    """configs/*.py import only the dependency-free leaves `fairjax.stages` and
    `fairjax.config_files` of fairjax."""
    leaves = {"fairjax.stages", "fairjax.config_files"}
    for path in sorted((ROOT / "configs").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            mods = ([f"{node.module}.{a.name}" if node.module == "fairjax" else node.module or ""
                     for a in node.names] if isinstance(node, ast.ImportFrom) else
                    [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            bad = [m for m in mods if m.startswith("fairjax") and m not in leaves]
            assert not bad, f"{path.name}:{node.lineno} imports {bad}"
