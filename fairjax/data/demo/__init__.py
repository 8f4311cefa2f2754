"""Synthetic demo corpus (job postings + candidate profiles); see README.md next to this file."""
from fairjax.data.demo.generator import (REGIONS, ROLES, make_candidates, make_postings,  # noqa: F401
                                         write_demo)
