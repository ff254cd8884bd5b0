"""Estimating the model from the records themselves (no labels), as Splink does: u from pairs drawn at random,
then m and the prior by expectation–maximisation over the pairs blocking brings together."""

import random
from collections.abc import Sequence
from typing import Any

from app.mpi.features import Features
from app.mpi.linker import BLOCK_LIMIT, blocking_keys, model
from app.mpi.model import COMPARISONS, REVIEW, Levels, Model, compare, estimate_m, estimate_u, match_probability
from app.mpi.rebuild import source_records

#: EM sessions (as in Splink): pairs blocked on one thing teach what the other comparisons look like among matches.
SESSIONS: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    (("id:",), ("id_number",)),  # same ID number: learns name, birth date, sex, phone, insurance, address
    (("nb:", "sb:"), ("name", "birth_date")),  # same name sound and birth year, or surname and birth date: learns the rest
)


def blocked_pairs(records: Sequence[Features], prefixes: tuple[str, ...] = ("",), limit: int = 2_000_000) -> list[tuple[int, int]]:
    """Index pairs of records sharing a blocking key that starts with one of `prefixes` (blocks larger than the
    online path searches are left out)."""
    blocks: dict[str, list[int]] = {}
    for i, f in enumerate(records):
        for key in blocking_keys(f):
            if key.startswith(prefixes):
                blocks.setdefault(key, []).append(i)
    pairs: set[tuple[int, int]] = set()
    for members in blocks.values():
        if len(members) > BLOCK_LIMIT:
            continue
        for x, a in enumerate(members):
            for b in members[x + 1:]:
                if a != b:
                    pairs.add((min(a, b), max(a, b)))
        if len(pairs) >= limit:
            break
    return sorted(pairs)


def train_on_district(sample: int, seed: int = 1) -> Model:
    """The model re-estimated from this district's source Patients (at most `sample` of them, drawn at random), with
    the thresholds of the model in use: a region's names, typing habits and shared phones are its own."""
    records = [r.features for r in source_records()[0]]
    chosen = random.Random(seed).sample(records, sample) if len(records) > sample else records
    current = model()
    return train(chosen, seed=seed, link=current.link, review=current.review,
                 description={"district_records": len(records), "sampled": len(chosen)})


def train(records: Sequence[Features], *, random_pairs: int = 300_000, seed: int = 1, link: float = 0.999, review: float = REVIEW,
          description: dict[str, Any] | None = None) -> Model:
    rng = random.Random(seed)
    n = len(records)
    sampled: list[Levels] = []
    for _ in range(random_pairs if n > 1 else 0):
        a, b = rng.randrange(n), rng.randrange(n)
        if a != b:
            sampled.append(compare(records[a], records[b]))
    u = estimate_u(sampled)
    learnt: dict[str, list[list[float]]] = {c: [] for c in COMPARISONS}
    counts = []
    for prefixes, fixed in SESSIONS:
        pairs = blocked_pairs(records, prefixes)
        counts.append(len(pairs))
        m, _ = estimate_m([compare(records[a], records[b]) for a, b in pairs], u, fixed=fixed)
        for comparison in COMPARISONS:
            if comparison not in fixed:
                learnt[comparison].append(m[comparison])
    m = {c: [sum(values) / len(values) for values in zip(*learnt[c], strict=True)] for c in COMPARISONS}
    every = [compare(records[a], records[b]) for a, b in blocked_pairs(records)]
    prior = _prior(every, m, u) if every else 0.1
    trained_on = {"records": n, "random_pairs": len(sampled), "session_pairs": counts, "blocked_pairs": len(every), **(description or {})}
    return Model(m=m, u=u, prior=prior, link=link, review=review, trained_on=trained_on)


def _prior(pairs: Sequence[Levels], m: dict[str, list[float]], u: dict[str, list[float]], iterations: int = 20) -> float:
    """The share of candidate pairs that are matches, by EM with m and u held."""
    prior = 0.1
    for _ in range(iterations):
        total = sum(match_probability(levels, m, u, prior) for levels in pairs)
        prior = min(max(total / len(pairs), 1e-6), 0.999)
    return prior
