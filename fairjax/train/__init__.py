"""Training: `loop` (the generic compiled loop), `build` (config -> model, objective, data;
`build.train(cfg)`), `__main__` (the CLI `python -m fairjax.train --config=configs/ilql.py`)."""
