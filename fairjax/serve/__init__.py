"""A local page and JSON API to check and rewrite job postings: `python -m fairjax.serve`.

`fairjax.serve.app.create_app(Services(...))` builds the FastAPI app; `fairjax.serve.service` holds
the framework-free parts (scoring, word diff, upload parsing, the bounded rewrite queue). See
docs/serve.md.
"""
