"""Names the run configs (configs/*.py) and the pipeline share; a leaf that imports nothing, so
configs/ reads it without loading any of the runtime.

SHARED: the fields the BC stage takes from the main run (same data, model, tokenizer, devices);
the stage config in `config.stages.bc` omits them (configs/common.py `stage`) and
`fairjax.pipeline.bc_config` fills them in.
"""
SHARED = ("seed", "model", "data", "reward", "mesh", "distributed")
