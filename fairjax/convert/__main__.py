"""`python -m fairjax.convert`: the entry point of the conversion program, `fairjax/cli/convert.py`."""
from fairjax.cli.convert import start

start()
