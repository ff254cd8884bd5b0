"""Resident matching quality: labelled generated residents through Qiao's online path, and Splink on the same data in
the same run.

    .venv/bin/python -m tests.benchmarks.mpi_quality [--records 50000] [--seed 11] [--clients 8] [--workers 2]

Qiao: the records, in random order, are posted as transaction Bundles of 100 Patients to `qiao serve` on a scratch
PostgreSQL database, so each is matched as a hospital's or community centre's write would be. The clusters are then
read from the index (each source record's master) and the open review queue.

Splink (DuckDB): the same records, given the same normalised fields Qiao's matching reads (ID number upgraded,
names in pinyin, phones without country code, address region and dwelling), the same blocking keys, comparisons of
the same fields with Splink's own levels and term-frequency adjustment, trained unsupervised as its tutorial does
(prior from exact ID numbers, u by random sampling, m by EM in three sessions), clustered at several thresholds.

Reported per method: pairwise precision, recall and F1 over the record pairs each puts in one cluster, falsely merged
pairs, and for Qiao the share of records waiting in review and how many of those reviews are right.
"""

import argparse
import random
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import psycopg

from app.mpi import features
from tests.benchmarks.common import migrated_database, post_concurrently, qiao_server, renewed_operator_token
from tests.benchmarks.residents import generate

Records = list[tuple[str, str, dict[str, Any]]]


@dataclass
class Quality:
    true_pairs: int
    linked_pairs: int
    correct_pairs: int

    @property
    def precision(self) -> float:
        return self.correct_pairs / self.linked_pairs if self.linked_pairs else 1.0

    @property
    def recall(self) -> float:
        return self.correct_pairs / self.true_pairs if self.true_pairs else 1.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    def line(self, label: str) -> str:
        return (f"  {label:<30} precision {self.precision:.5f}  recall {self.recall:.4f}  F1 {self.f1:.4f}"
                f"  falsely merged pairs {self.linked_pairs - self.correct_pairs}")


def pairs(size: int) -> int:
    return size * (size - 1) // 2


def quality(person_of: dict[str, str], cluster_of: dict[str, str]) -> Quality:
    """Pairwise quality of a clustering of records against the people they belong to."""
    people = Counter(person_of.values())
    clusters = Counter(cluster_of[r] for r in person_of)
    both = Counter((cluster_of[r], person_of[r]) for r in person_of)
    return Quality(sum(map(pairs, people.values())), sum(map(pairs, clusters.values())), sum(map(pairs, both.values())))


# --- Qiao, online ----------------------------------------------------------------------------------------------


def post_records(url: str, records: Records, *, clients: int, bundle: int, database_url: str) -> tuple[dict[str, str], float, list[str]]:
    """Post the records as transaction Bundles; → (record id → Patient id, seconds, why each failed bundle failed)."""
    batches = [records[i:i + bundle] for i in range(0, len(records), bundle)]
    bodies = [orjson.dumps({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": patient, "request": {"method": "POST", "url": "Patient"}} for _, _, patient in batch]}) for batch in batches]
    placed: dict[str, str] = {}
    failed: list[str] = []

    def placing(index: int, response: httpx.Response) -> None:
        if response.status_code != 200:
            failed.append(f"{response.status_code} {response.text[:300]}")
            return
        for (record_id, _, _), entry in zip(batches[index], response.json()["entry"], strict=True):
            placed[record_id] = entry["response"]["location"].split("/")[1]

    seconds = post_concurrently(url, bodies, clients=clients, headers=renewed_operator_token(database_url), on_response=placing)
    return placed, seconds, failed


def qiao_online(records: Records, options: argparse.Namespace) -> None:
    database_url = migrated_database("qiao_bench_mpi_quality")
    with qiao_server(database_url, workers=options.workers) as server:
        placed, seconds, failed = post_records(f"{server.url}", records, clients=options.clients, bundle=options.bundle,
                                               database_url=database_url)
    plain = database_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain) as connection:
        master_of = dict(connection.execute("SELECT patient_id, master_id FROM mpi_record").fetchall())
        reviews = connection.execute(REVIEWS_SQL).fetchall()
    person_of = {record_id: person_id for record_id, person_id, _ in records if record_id in placed}
    cluster_of = {record_id: master_of[placed[record_id]] for record_id in person_of}
    result = quality(person_of, cluster_of)
    print(f"Qiao online ({options.clients} clients, bundles of {options.bundle}, {options.workers} workers, PostgreSQL):"
          f" {len(placed)} records matched in {seconds:.0f} s ({len(placed) / seconds:.0f}/s), {len(failed)} failed bundles")
    for reason in sorted(set(failed))[:3]:
        print(f"  failed: {reason}")
    print(result.line("clusters (masters)"))
    person_by_patient = {placed[r]: p for r, p in person_of.items()}
    right = review_queue(reviews, master_of, person_by_patient, len(placed))
    merged: dict[str, str] = {}  # what a steward who decides every review rightly would leave

    def root(master_id: str) -> str:
        while master_id in merged:
            master_id = merged[master_id]
        return master_id

    for (patient_id, master_id, *_), same in zip(reviews, right, strict=True):
        if same and root(master_of[patient_id]) != root(master_id):
            merged[root(master_of[patient_id])] = root(master_id)
    print(quality(person_of, {r: root(m) for r, m in cluster_of.items()}).line("after every review decided"))


REVIEWS_SQL = "SELECT patient_id, master_id, probability, levels FROM mpi_review WHERE status = 'open'"
REVIEW_BANDS = (0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.999)  # the review queue is also counted from each of these up
REVIEW_KINDS = 8  # the commonest kinds of review printed


def review_queue(reviews: list[Any], master_of: dict[str, str], person_by_patient: dict[str, str], records: int) -> list[bool]:
    """Print the open reviews (patient, master, probability, levels as JSON; REVIEWS_SQL): how many, of how many
    records, how many right (the record is the same person as one of the master's), the same from each probability
    up (what a higher review threshold, QIAO_MPI_REVIEW_THRESHOLD, would leave), and the commonest kinds of review
    (the comparisons' levels) with how many of each are right. → whether each review is right."""
    members: dict[str, set[str]] = {}
    for patient_id, master_id in master_of.items():
        if patient_id in person_by_patient:
            members.setdefault(master_id, set()).add(person_by_patient[patient_id])
    right = [person_by_patient.get(patient_id) in members.get(master_id, ()) for patient_id, master_id, *_ in reviews]
    in_review = {review[0] for review in reviews}
    print(f"  review queue: {len(reviews)} open reviews of {len(in_review)} records"
          f" ({len(in_review) / records:.2%} of records), {sum(right)} of them the same person")
    for floor in REVIEW_BANDS:
        kept = [(review, same) for review, same in zip(reviews, right, strict=True) if review[2] >= floor]
        in_band = {review[0] for review, _ in kept}
        print(f"    from p {floor:<5}: {len(kept):6} reviews of {len(in_band):6} records ({len(in_band) / records:.2%}),"
              f" {sum(same for _, same in kept)} the same person")
    kinds: Counter[str] = Counter()
    right_kinds: Counter[str] = Counter()
    for review, same in zip(reviews, right, strict=True):
        kind = ", ".join(f"{c} {level}" for c, level in sorted(orjson.loads(review[3]).items()))
        kinds[kind] += 1
        right_kinds[kind] += same
    for kind, count in kinds.most_common(REVIEW_KINDS):
        print(f"    {count:6} reviews, {right_kinds[kind]:6} right: {kind}")
    return right


# --- Splink, batch ---------------------------------------------------------------------------------------------


def splink_rows(records: Records) -> list[dict[str, Any]]:
    """The fields Qiao's matching reads, as columns."""
    rows = []
    for record_id, _, patient in records:
        f = features.of_patient(patient)
        name = f.name
        number = f.id_number if f.id_number and len(f.id_number) == 18 else None
        rows.append({
            "unique_id": record_id, "id_number": f.id_number, "id_head": number[:9] if number else None,
            "id_tail": number[9:] if number else None, "name_chars": name.chars if name else None,
            "surname": name.surname if name else None, "name_pinyin": name.pinyin if name else None,
            "given_pinyin": name.pinyin[len(name.surname):] if name else None, "birth_date": f.birth_date,
            "birth_year": f.birth_date[:4] if f.birth_date else None, "sex": f.sex, "phone": f.phones[0] if f.phones else None,
            "insurance": f.insurance, "region": f.region, "address": f.address, "dwelling": f.dwelling,
        })
    return rows


def splink_batch(records: Records, thresholds: Iterable[float]) -> None:
    import pyarrow
    import splink.comparison_level_library as cll
    import splink.comparison_library as cl
    from splink import DuckDBAPI, Linker, SettingsCreator, block_on

    started = time.perf_counter()
    db_api = DuckDBAPI()
    table = db_api.register(pyarrow.Table.from_pylist(splink_rows(records)), table_name="residents")
    name = cl.CustomComparison(output_column_name="name", comparison_levels=[
        cll.NullLevel("name_pinyin"),
        cll.ExactMatchLevel("name_chars").configure(tf_adjustment_column="name_chars"),
        cll.ExactMatchLevel("name_pinyin").configure(tf_adjustment_column="name_pinyin"),
        cll.And(cll.ExactMatchLevel("surname"), cll.JaroWinklerLevel("given_pinyin", 0.88)),
        cll.ElseLevel(),
    ])
    address = cl.CustomComparison(output_column_name="address", comparison_levels=[
        cll.NullLevel("region"), cll.ExactMatchLevel("address"), cll.ExactMatchLevel("dwelling"), cll.ExactMatchLevel("region"),
        cll.ElseLevel(),
    ])
    settings = SettingsCreator(
        link_type="dedupe_only",
        comparisons=[
            cl.DamerauLevenshteinAtThresholds("id_number", [1, 2]),
            name,
            cl.DateOfBirthComparison("birth_date", input_is_string=True),
            cl.ExactMatch("sex"),
            cl.ExactMatch("phone").configure(term_frequency_adjustments=True),
            cl.ExactMatch("insurance"),
            address,
        ],
        blocking_rules_to_generate_predictions=[
            block_on("id_number"), block_on("id_head", "name_pinyin"), block_on("id_tail", "surname"),
            block_on("name_pinyin", "birth_year"), block_on("surname", "birth_date"), block_on("phone"), block_on("insurance"),
        ],
        retain_intermediate_calculation_columns=False,
    )
    linker = Linker(table, settings, log_level=None)
    linker.training.estimate_probability_two_random_records_match([block_on("id_number")], recall=0.7)
    linker.training.estimate_u_using_random_sampling(max_pairs=5e6, seed=1)
    linker.training.estimate_parameters_using_expectation_maximisation(block_on("id_number"))
    linker.training.estimate_parameters_using_expectation_maximisation(block_on("name_pinyin", "birth_year"))
    linker.training.estimate_parameters_using_expectation_maximisation(block_on("insurance"))
    predictions = linker.inference.predict(threshold_match_probability=0.01)
    trained = time.perf_counter() - started
    person_of = {record_id: person_id for record_id, person_id, _ in records}
    print(f"Splink {__import__('splink').__version__} (DuckDB): trained and predicted in {trained:.0f} s")
    for threshold in thresholds:
        clusters = linker.clustering.cluster_pairwise_predictions_at_threshold(predictions, threshold_match_probability=threshold)
        cluster_of = {row["unique_id"]: str(row["cluster_id"]) for row in clusters.as_record_list()}
        print(quality(person_of, cluster_of).line(f"clusters at p >= {threshold}"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--bundle", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--skip-qiao", action="store_true", help="Splink only")
    options = parser.parse_args()

    records = generate(options.records, seed=options.seed)
    random.Random(options.seed).shuffle(records)
    people = len({person for _, person, _ in records})
    print(f"mpi quality: {len(records)} records of {people} people (tests/benchmarks/residents.py, seed {options.seed})")
    if not options.skip_qiao:
        qiao_online(records, options)
    splink_batch(records, (0.5, 0.9, 0.99, 0.999))


if __name__ == "__main__":
    main()
