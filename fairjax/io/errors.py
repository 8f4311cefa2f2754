"""Moved to `fairjax.errors` (the leaf module); this alias keeps old imports working."""
import sys

from fairjax import errors as _errors

sys.modules[__name__] = _errors
