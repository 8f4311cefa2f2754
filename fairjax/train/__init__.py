"""Training: `loop` (the generic compiled loop), `build` (config -> model, objective, data;
`build.train(cfg)`); `python -m fairjax.train --config=configs/ilql.py` is the program
`fairjax/cli/train.py` (`__main__` hands over to it)."""
