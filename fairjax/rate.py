"""`python -m fairjax.rate {effects,run}`: the entry point of the RATE audit program,
`fairjax/cli/rate.py` (the audit: `fairjax/audit.py`; the estimators: `fairjax/eval/rate.py`)."""
if __name__ == "__main__":
    from fairjax.cli.rate import start

    start()
