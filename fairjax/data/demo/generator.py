"""A small, deterministic, SYNTHETIC corpus of job postings and candidate profiles.

Everything here is invented by templates (no real people or companies) so that the main command
and the tests run without external files. Postings vary in role, seniority, location (with a
region label) and wording style: "agentic" (competition/dominance words, the kind the
masculine-coded lexicon of Gaucher et al. 2011 flags), "communal" (support/collaboration words,
the feminine-coded kind) or "neutral". Candidates {id, text, gender, region, profession} describe
themselves with the same role vocabulary and, by construction, female candidates use communal
phrases and male candidates agentic phrases more often (probability `skew`, default 0.75), so that
a posting's wording shifts the gender shares of its best-matching candidates: the diversity reward
has signal to learn from. That correlation is an assumption of the generator, not a finding.

API: make_postings(n, seed) -> list[dict]; make_candidates(n, seed) -> list[dict];
write_demo(dir, n_postings, n_candidates, seed) -> {"train": path, "eval": path, "candidates": path}.
"""
from __future__ import annotations

import json
import os
import numpy as np

from fairjax.data.jobs import split_of

ROLES = {  # role -> (profession label, technologies / skills, duties)
    "Software Engineer": ("software_engineer", ["Python", "Go", "PostgreSQL", "Kubernetes"],
                          "build and operate the services behind our product"),
    "Frontend Developer": ("software_engineer", ["TypeScript", "React", "GraphQL"],
                           "craft the web app our customers use every day"),
    "Data Scientist": ("data_scientist", ["Python", "SQL", "machine learning"],
                       "turn our data into models and decisions"),
    "Product Designer": ("designer", ["Figma", "user research"],
                         "design flows that make complex tasks simple"),
    "Product Manager": ("product_manager", ["roadmaps", "analytics"],
                        "decide what we build next and why"),
    "DevOps Engineer": ("software_engineer", ["AWS", "Terraform", "Docker", "Linux"],
                        "keep our infrastructure fast, safe and cheap"),
    "Nurse": ("nurse", ["patient care", "triage"], "care for patients in our clinic"),
    "Accountant": ("accountant", ["bookkeeping", "tax filings", "Excel"],
                   "keep our books accurate and our audits clean"),
    "Teacher": ("teacher", ["curriculum design", "classroom management"],
                "teach and mentor students in small classes"),
    "Sales Representative": ("sales", ["CRM", "negotiation"], "grow our customer base"),
}
LOCATIONS = [  # (city, region) with the 8 upstream region names
    ("San Francisco, CA", "North America"), ("New York, NY", "North America"),
    ("Toronto, Canada", "North America"), ("Austin, TX", "North America"),
    ("London, UK", "Europe"), ("Berlin, Germany", "Europe"), ("Paris, France", "Europe"),
    ("Amsterdam, Netherlands", "Europe"), ("Singapore", "Asia"), ("Bangalore, India", "Asia"),
    ("Tokyo, Japan", "Asia"), ("Sydney, Australia", "Australia"), ("Nairobi, Kenya", "Africa"),
    ("Lagos, Nigeria", "Africa"), ("Sao Paulo, Brazil", "South America"),
    ("Buenos Aires, Argentina", "South America"), ("Remote", "Remote"),
]
REGIONS = sorted({r for _, r in LOCATIONS})
SENIORITY = ["Junior", "", "Senior", "Lead"]
COMPANIES = ["Acme Analytics", "Bluefin Labs", "Cobalt Health", "Driftwood", "Evergreen Learning",
             "Fathom Robotics", "Granite Finance", "Harbor Logistics", "Ionic Systems", "Juniper Care",
             "Kestrel AI", "Lumen Retail", "Meridian Energy", "Nimbus Cloud", "Orchard Foods"]
# Phrase banks (our own wording). Agentic phrases lean on words like competitive, dominant,
# driven, ambitious, decisive, fearless; communal ones on supportive, collaborative, nurturing,
# understanding, warm, community.
AGENTIC = ["We are a competitive team that wants to dominate our market.",
           "You are driven, ambitious and decisive under pressure.",
           "You take charge, lead fearlessly and win against strong competitors.",
           "We want an assertive self-starter who is confident taking risks.",
           "Expect a fast, challenging environment for strong, independent performers.",
           "You will outperform targets and defend your decisions with hard analysis."]
COMMUNAL = ["We are a supportive, collaborative team that cares about each other.",
            "You are warm, patient and understanding with colleagues and customers.",
            "You enjoy helping others grow and building trust together.",
            "We value empathy, kindness and a sense of community.",
            "Expect a nurturing environment where we share responsibilities and learn together.",
            "You are committed to the people you work with and communicate with care."]
NEUTRAL = ["Our team is small and works in two-week cycles.",
           "You will work with engineers, designers and customers.",
           "We offer a salary range, health insurance and paid leave.",
           "The role reports to the head of the department.",
           "You have relevant experience and can explain your past work.",
           "We review every application and reply within two weeks."]
STYLES = ("agentic", "communal", "neutral")
_BANK = {"agentic": AGENTIC, "communal": COMMUNAL, "neutral": NEUTRAL}
CANDIDATE_AGENTIC = ["I am competitive and driven, and I like to lead from the front.",
                     "I am ambitious, decisive and confident taking risks.",
                     "I thrive under pressure and enjoy challenging, independent work."]
CANDIDATE_COMMUNAL = ["I am supportive and collaborative, and I care about my team.",
                      "I enjoy helping others grow and building trust with customers.",
                      "I am patient, understanding and committed to the people I work with."]
CANDIDATE_NEUTRAL = ["I have worked in small and large teams.", "I am looking for a full-time role.",
                     "I can start within a month."]
FIRST = {"F": ["Alice", "Maria", "Priya", "Chen", "Amara", "Sofia", "Hana", "Lucia"],
         "M": ["David", "Omar", "Kenji", "Lucas", "Ravi", "Tom", "Kwame", "Mateo"]}


def _pick(rng: np.random.Generator, seq):
    return seq[int(rng.integers(len(seq)))]


def _sample(rng: np.random.Generator, seq, k: int) -> list:
    return [seq[i] for i in sorted(rng.choice(len(seq), size=min(k, len(seq)), replace=False))]


def make_postings(n: int, seed: int = 0, with_rewards: bool = False) -> list[dict]:
    """n synthetic postings: {id, text, company, location, region, title, role, profession,
    seniority, style, technologies[, reward]}. Text starts with an HN-style header
    "Company | City | Title | REMOTE/ONSITE | Full-time". `reward` (with_rewards) is a synthetic
    stand-in: -10 * |#agentic - #communal phrases|, so balanced wording scores higher."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
    out = []
    roles = list(ROLES)
    for i in range(n):
        role = _pick(rng, roles)
        profession, techs, duty = ROLES[role]
        city, region = _pick(rng, LOCATIONS)
        senior = _pick(rng, SENIORITY)
        title = f"{senior} {role}".strip()
        company = _pick(rng, COMPANIES)
        style = STYLES[int(rng.integers(3))]
        n_style = int(rng.integers(2, 4))
        phrases = _sample(rng, _BANK[style], n_style)
        counter = {"agentic": "communal", "communal": "agentic", "neutral": "neutral"}[style]
        if rng.random() < 0.3:  # mixed wording now and then
            phrases.append(_pick(rng, _BANK[counter]))
        phrases += _sample(rng, NEUTRAL, 2)
        order = rng.permutation(len(phrases))
        remote = city == "Remote" or rng.random() < 0.25
        where = "REMOTE" if remote else "ONSITE"
        skills = _sample(rng, techs, int(rng.integers(1, len(techs) + 1)))
        text = (f"{company} | {city} | {title} | {where} | Full-time\n\n"
                f"{company} is hiring a {title} to {duty}. "
                + " ".join(phrases[k] for k in order)
                + f"\n\nSkills: {', '.join(skills)}.\n\nApply at jobs@{company.split()[0].lower()}.example")
        rec = {"id": f"demo-{seed}-{i:05d}", "text": text, "company": company, "location": city,
               "region": region, "title": title, "role": role, "profession": profession,
               "seniority": senior or "Mid", "style": style, "technologies": skills}
        if with_rewards:
            a = sum(p in AGENTIC for p in phrases)
            c = sum(p in COMMUNAL for p in phrases)
            rec["reward"] = float(-10.0 * abs(a - c))
        out.append(rec)
    return out


def make_candidates(n: int, seed: int = 0, female_share: float = 0.5, skew: float = 0.75) -> list[dict]:
    """n synthetic candidates {id, text, gender "F"/"M", region, profession}. With probability
    `skew` a candidate's self-description uses the style phrases associated (by construction) with
    their gender, else the other style; one neutral phrase is always added."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 2]))
    out = []
    roles = list(ROLES)
    for i in range(n):
        gender = "F" if rng.random() < female_share else "M"
        role = _pick(rng, roles)
        profession, techs, duty = ROLES[role]
        city, region = _pick(rng, LOCATIONS)
        own = CANDIDATE_COMMUNAL if gender == "F" else CANDIDATE_AGENTIC
        other = CANDIDATE_AGENTIC if gender == "F" else CANDIDATE_COMMUNAL
        bank = own if rng.random() < skew else other
        years = int(rng.integers(1, 15))
        text = (f"{_pick(rng, FIRST[gender])} - {role} based in {city}. {years} years of experience; "
                f"skilled in {', '.join(_sample(rng, techs, 2))}. I want to {duty}. "
                + " ".join(_sample(rng, bank, 2)) + " " + _pick(rng, CANDIDATE_NEUTRAL))
        out.append({"id": f"cand-{seed}-{i:05d}", "text": text, "gender": gender, "region": region,
                    "profession": profession, "location": city})
    return out


def _write_jsonl(path: str, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def write_demo(directory: str | os.PathLike, n_postings: int = 200, n_candidates: int = 400,
               seed: int = 0, eval_fraction: float = 0.2, with_rewards: bool = True) -> dict[str, str]:
    """Write jobs_train.jsonl, jobs_eval.jsonl (hashed split of the postings by id) and
    candidates.jsonl into `directory`; returns their paths."""
    os.makedirs(directory, exist_ok=True)
    posts = make_postings(n_postings, seed, with_rewards=with_rewards)
    fr = {"train": 1.0 - eval_fraction, "eval": eval_fraction}
    paths = {k: os.path.join(os.fspath(directory), f"jobs_{k}.jsonl") for k in fr}
    for k in fr:
        _write_jsonl(paths[k], [p for p in posts if split_of(p["id"], fr) == k])
    paths["candidates"] = os.path.join(os.fspath(directory), "candidates.jsonl")
    _write_jsonl(paths["candidates"], make_candidates(n_candidates, seed))
    return paths
