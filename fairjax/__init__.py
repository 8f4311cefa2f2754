"""fairjax: offline RL (BC, ILQL, A-LoL, PHF, DPO) in JAX/Flax for fairer job descriptions."""
__version__ = "0.1.0"
