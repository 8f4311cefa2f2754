"""`python -m fairjax.serve`: the entry point of the serving program, `fairjax/cli/serve.py`."""
from fairjax.cli.serve import start

start()
