"""Blocking at scale, in memory (no database): how many records a new record's blocking keys bring as candidates,
and how many pairs of one person's records share no key under the block limit.

    .venv/bin/python -m tests.benchmarks.mpi_blocks [--records 1000000] [--seed 11] [--limits 200,100,50]

The labelled generated residents in the order `mpi_rebuild` loads them, with the same 1,000 records held out. For
each limit: the held-out records' pools (the records under their keys of at most that many records: p50, p90, p99,
max), each key kind's block sizes at the current limit, and the indexed pairs of one person with no key in common
(such a pair can still be linked through a third record). At 1,000,000 records it takes about 8 minutes.
"""

import argparse
import random
import statistics
from collections import Counter, defaultdict

from app.mpi import features, linker
from tests.benchmarks.residents import generate

HELD_OUT = 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--limits", default=f"200,100,{linker.BLOCK_LIMIT}")
    options = parser.parse_args()

    records = generate(options.records, seed=options.seed)
    random.Random(options.seed).shuffle(records)
    keyed = [(person, linker.blocking_keys(features.of_patient(patient))) for _, person, patient in records]
    indexed, held_out = keyed[:-HELD_OUT], keyed[-HELD_OUT:]
    blocks: dict[str, list[int]] = defaultdict(list)
    people: dict[str, list[int]] = defaultdict(list)
    for number, (person, keys) in enumerate(indexed):
        people[person].append(number)
        for key in keys:
            blocks[key].append(number)
    print(f"mpi blocks: {len(indexed)} records indexed, {len(held_out)} held out, {len(blocks)} keys")

    sizes: dict[str, list[int]] = defaultdict(list)
    for _, keys in held_out:
        for key in keys:
            if 0 < len(blocks.get(key, ())) <= linker.BLOCK_LIMIT:
                sizes[key.split(":", 1)[0]].append(len(blocks[key]))
    for kind, found in sorted(sizes.items()):
        print(f"  {kind}: blocks (limit {linker.BLOCK_LIMIT}) p50 {statistics.median(found):.0f} p99 {_p(found, 0.99)} max {max(found)}")

    for limit in sorted({int(limit) for limit in options.limits.split(",")}, reverse=True):
        pools = [len({n for key in keys if len(blocks.get(key, ())) <= limit for n in blocks.get(key, ())}) for _, keys in held_out]
        apart = Counter(not _share_a_key(indexed[a][1], indexed[b][1], blocks, limit)
                        for numbers in people.values() for i, a in enumerate(numbers) for b in numbers[i + 1:])
        print(f"  limit {limit:4}: pool p50 {statistics.median(pools):.0f} p90 {_p(pools, 0.9)} p99 {_p(pools, 0.99)} max {max(pools)};"
              f" pairs of one person with no key in common {apart[True]} of {sum(apart.values())}")


def _share_a_key(a: list[str], b: list[str], blocks: dict[str, list[int]], limit: int) -> bool:
    return any(len(blocks[key]) <= limit for key in set(a) & set(b))


def _p(values: list[int], quantile: float) -> int:
    return sorted(values)[min(len(values) - 1, int(quantile * len(values)))]


if __name__ == "__main__":
    main()
