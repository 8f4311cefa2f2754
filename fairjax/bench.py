"""`python -m fairjax.bench TARGET`: the entry point of the benchmark program,
`fairjax/cli/bench.py` (the benchmarks themselves: `fairjax/benchmarks/`)."""
if __name__ == "__main__":
    from fairjax.cli.bench import start

    start()
