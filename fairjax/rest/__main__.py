"""`python -m fairjax.rest`: the entry point of the ReST program, `fairjax/cli/rest.py`."""
from fairjax.cli.rest import start

start()
