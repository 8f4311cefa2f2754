"""Moved to `fairjax.io.tokenizer` (io loads tokenizers with models); this alias keeps old
imports working."""
import sys

from fairjax.io import tokenizer as _tokenizer

sys.modules[__name__] = _tokenizer
