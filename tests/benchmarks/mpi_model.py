"""The match model on labelled generated residents, in memory: train it (unsupervised) and grade every pair that
blocking brings together, against the truth. Measures blocking recall and the model's pairwise errors; the online
path's clustering, the review share per record and Splink's figures are still to come (issue 5).

    .venv/bin/python -m tests.benchmarks.mpi_model --records 20000 [--seed 3] [--write-model app/mpi/model.yaml]
"""

import argparse
import time
from collections import Counter
from pathlib import Path

from app.mpi import features
from app.mpi.model import CERTAIN, POSSIBLE, PROBABLE, compare, grade
from app.mpi.training import blocked_pairs, train
from tests.benchmarks.residents import generate, true_pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--write-model", type=Path, help="save the trained model here (the shipped one: app/mpi/model.yaml)")
    options = parser.parse_args()

    records = generate(options.records, seed=options.seed)
    parsed = [features.of_patient(patient) for _, _, patient in records]
    started = time.perf_counter()
    model = train(parsed, description={"data": f"tests/benchmarks/residents.py generate({options.records}, seed={options.seed})"})
    trained_in = time.perf_counter() - started
    if options.write_model:
        options.write_model.write_text(model.to_yaml(), encoding="utf-8")

    position = {record_id: i for i, (record_id, _, _) in enumerate(records)}
    truth = {tuple(sorted((position[a], position[b]))) for a, b in true_pairs(records)}
    pairs = blocked_pairs(parsed)
    graded: Counter[tuple[str, bool]] = Counter()
    for a, b in pairs:
        levels = compare(parsed[a], parsed[b])
        graded[(grade(model, levels, model.probability(model.weight(levels))), (a, b) in truth)] += 1
    linked_true = graded[(CERTAIN, True)] + graded[(PROBABLE, True)]
    linked_false = graded[(CERTAIN, False)] + graded[(PROBABLE, False)]
    print(f"records {len(records)}, people {len({p for _, p, _ in records})}, true pairs {len(truth)}, trained in {trained_in:.0f} s")
    print(f"blocking recall {len(truth & set(pairs)) / len(truth):.4f} ({len(pairs)} candidate pairs)")
    print(f"linked pairs: {linked_true} true, {linked_false} false (pairwise precision {linked_true / max(linked_true + linked_false, 1):.5f},"
          f" recall {linked_true / len(truth):.4f})")
    print(f"review pairs: {graded[(POSSIBLE, True)]} true, {graded[(POSSIBLE, False)]} false")


if __name__ == "__main__":
    main()
