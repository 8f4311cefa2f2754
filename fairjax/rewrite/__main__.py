"""`python -m fairjax.rewrite`: the entry point of the rewriting program, `fairjax/cli/rewrite.py`."""
from fairjax.cli.rewrite import start

start()
