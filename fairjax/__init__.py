"""fairjax: offline RL (BC, ILQL, A-LoL, PHF, DPO) in JAX/Flax for fairer job descriptions."""
__version__ = "0.1.0"

import os as _os

# transformers' advisory banner ("PyTorch was not found ...") on every command: fairjax never uses
# transformers' PyTorch models (only tokenizers/configs), so the advice is noise. A user's own
# setting of the variable wins.
_os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
