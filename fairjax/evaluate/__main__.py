"""`python -m fairjax.evaluate`: the entry point of the evaluation program, `fairjax/cli/evaluate.py`."""
from fairjax.cli.evaluate import start

start()
