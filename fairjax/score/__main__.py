"""`python -m fairjax.score`: the entry point of the scoring program, `fairjax/cli/score.py`."""
from fairjax.cli.score import start

start()
