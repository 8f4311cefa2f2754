"""`python -m fairjax.train`: the entry point of the training program, `fairjax/cli/train.py`."""
from fairjax.cli.train import start

start()
