"""Deprecated alias: the trainer is split into `fairjax.train.loop` (the generic loop),
`fairjax.train.build` (config -> objects, `train`) and `fairjax.runs` (restoring run dirs)."""
from fairjax.agents.registry import build_algorithm  # noqa: F401
from fairjax.runs import RestoredRun, load_policy_params, restore_policy, restore_run  # noqa: F401
from fairjax.train.build import (  # noqa: F401
    build_data, build_model, build_setup, data_paths, demo_tokenizer, make_eval_generate_fn, train,
    validate_config)
from fairjax.train.loop import (  # noqa: F401
    MetricsLogger, NonFiniteLossError, RunResult, Setup, StatePlan, compile_train_step,
    make_eval_step, make_train_step, restore_state, stack_micro, total_steps)
