"""`qiao demo`: a synthetic community's feeds, written as files and played through the adapters, so a newcomer sees
the whole flow: a hospital's HL7 v2 in GB18030, a community HIS's CSV dumps, public-health records and follow-ups,
family-doctor contracts, all about the same residents under different local numbers, linked by resident matching."""

import csv
import io
import random
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import orjson

from app.mpi.id_number import check_character

SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗"
GIVEN = "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华"
HOMOPHONES = {"伟": "玮", "芳": "方", "静": "婧", "丽": "莉", "明": "铭", "华": "桦", "军": "君", "平": "萍"}
TEAM = [{"staff_id": "D001", "name": "王建国", "role": "1"}, {"staff_id": "N001", "name": "李秀兰", "role": "2"},
        {"staff_id": "P001", "name": "赵文", "role": "3"}]


@dataclass(frozen=True)
class Resident:
    n: int
    surname: str
    given: str
    sex: str  # GB/T 2261.1: 1 male, 2 female
    born: date
    phone: str
    hypertension: bool
    diabetes: bool

    @property
    def name(self) -> str:
        return self.surname + self.given

    @property
    def id_number(self) -> str:
        body = f"110101{self.born:%Y%m%d}{self.n * 2 + (1 if self.sex == '1' else 0):03d}"  # n ≤ 499: each number issued once
        return body + check_character(body)

    @property
    def record_no(self) -> str:
        return f"110101001-{self.n:05d}"


def residents(count: int, seed: int = 2026) -> list[Resident]:
    if not 1 <= count <= 499:
        raise ValueError("the demo's ID numbers give up to 499 residents")  # beyond, two people would share one
    rng = random.Random(seed)
    return [Resident(n, rng.choice(SURNAMES), "".join(rng.choices(GIVEN, k=2)), rng.choice("12"),
                     date(rng.randint(1940, 1980), rng.randint(1, 12), rng.randint(1, 28)), f"139{rng.randint(0, 99999999):08d}",
                     hypertension=n % 2 == 0, diabetes=n % 3 == 0) for n in range(1, count + 1)]


def write_feeds(directory: Path, people: list[Resident]) -> list[tuple[str, Path]]:
    """The feeds as files, each with the source that sends it, in the order they are played."""
    feeds = {
        ("hepingli-public-health", "health-record.jsonl"): _jsonl(_health_record(r) for r in people),
        ("hepingli-chc", "patients.csv"): _csv(["患者编号", "姓名", "性别", "出生日期", "身份证号", "联系电话"],
                                               ([f"P{r.n:05d}", r.name, r.sex, f"{r.born}", r.id_number, r.phone] for r in people)),
        ("dongcheng-hospital", "admissions-and-results.hl7"): _hl7(people),
        ("hepingli-public-health", "hypertension-followups.jsonl"): _jsonl(_followup(r, k, "HTN") for r in people if r.hypertension for k in (1, 2)),
        ("hepingli-public-health", "diabetes-followups.jsonl"): _jsonl(_followup(r, k, "DM") for r in people if r.diabetes for k in (1, 2)),
        ("hepingli-family-doctor", "contracts.jsonl"): _jsonl(_contract(r) for r in people if r.hypertension or r.diabetes),
    }
    written = []
    for (source, name), data in feeds.items():
        path = directory / source / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        written.append((source, path))
    return written


def _health_record(r: Resident) -> dict[str, object]:
    return {"record_no": r.record_no, "name": r.name, "sex": r.sex, "birth_date": f"{r.born}", "id_number": r.id_number,
            "phone": r.phone, "region_code": "110101", "address": f"和平里街道{r.n}号楼", "status": "正常"}


def _followup(r: Resident, k: int, prefix: str) -> dict[str, object]:
    rng = random.Random(r.n * 10 + k)
    form: dict[str, object] = {
        "form_id": f"{prefix}-{r.n:05d}-{k}", "record_no": r.record_no, "id_number": r.id_number, "name": r.name,
        "sex": r.sex, "birth_date": f"{r.born}", "visit_date": f"{date(2026, 3, 2) + timedelta(days=91 * (k - 1) + r.n % 20)}",
        "visit_way": rng.choice("123"), "sbp": rng.randint(118, 168), "dbp": rng.randint(70, 102), "heart_rate": rng.randint(60, 90),
        "weight": round(rng.uniform(52, 88), 1), "classification": rng.choice("1112"), "adherence": "1", "doctor": "王建国",
        "medications": [{"name": "苯磺酸氨氯地平片" if prefix == "HTN" else "盐酸二甲双胍片", "times_per_day": 1, "dose": 5, "unit": "mg"}],
    }
    if prefix == "DM":
        form.update(fasting_glucose=round(rng.uniform(5.6, 9.8), 1))
    return form


def _contract(r: Resident) -> dict[str, object]:
    terminated = r.n % 10 == 0
    return {"contract_id": f"QY-2026-{r.n:05d}", "record_no": r.record_no, "id_number": r.id_number, "name": r.name,
            "sex": r.sex, "birth_date": f"{r.born}", "team_id": "T01", "team_name": "和平里第一家庭医生团队", "members": TEAM,
            "doctor_id": "D001", "packages": [{"code": "JC01", "name": "基础包"}], "signed_on": "2026-01-05",
            "start": "2026-01-06", "end": "2027-01-05", "status": "4" if terminated else "2",
            **({"terminated_on": "2026-09-30", "termination_reason": "迁出辖区"} if terminated else {})}


def _hl7(people: list[Resident]) -> bytes:
    """Every third resident visits the hospital: ADT^A04, then ORU^R01 with blood pressure and glucose. For every
    other one of them the hospital's clerk typed the given name by ear (玮 for 伟), as resident matching must expect."""
    messages = []
    for r in people[::3]:
        given = "".join(HOMOPHONES.get(c, c) for c in r.given) if r.n % 2 else r.given
        messages.append("\r".join([
            f"MSH|^~\\&|HIS|DCH|QIAO|QIAO|20260410093000||ADT^A04^ADT_A01|ADT{r.n:06d}|P|2.4||||||GB18030",
            "EVN|A04|20260410093000",
            f"PID|1||MZ{r.n:06d}^^^DCH^MR~{r.id_number}^^^^NNCHN||{r.surname}^{given}||{r.born:%Y%m%d}|{'M' if r.sex == '1' else 'F'}"
            f"|||和平里街道{r.n}号楼^^北京市^北京市^100013^^^^东城区||{r.phone}",
            f"PV1|1|O|心内科^^^DCH||||||||||||||||V{r.n:06d}|||||||||||||||||||||||||20260410090000"]))
        messages.append("\r".join([
            f"MSH|^~\\&|LIS|DCH|QIAO|QIAO|20260410101500||ORU^R01^ORU_R01|LAB{r.n:06d}|P|2.5.1||||||GB18030",
            f"PID|1||MZ{r.n:06d}^^^DCH^MR||{r.surname}^{given}||{r.born:%Y%m%d}|{'M' if r.sex == '1' else 'F'}",
            f"OBR|1||R{r.n:06d}|LAB01^慢病随访检查|||20260410100000||||||||||||||||F",
            f"OBX|1|NM|SBP^收缩压||{140 + r.n % 25}|mmHg|||||F|||20260410100000",
            f"OBX|2|NM|DBP^舒张压||{85 + r.n % 12}|mmHg|||||F|||20260410100000",
            f"OBX|3|NM|GLU^空腹血糖||{6 + r.n % 4}.{r.n % 10}|mmol/L|||||F|||20260410100000"]))
    return ("\n".join(messages) + "\n").encode("gb18030")


def _jsonl(items: Iterable[dict[str, object]]) -> bytes:
    return b"".join(orjson.dumps(item) + b"\n" for item in items)


def _csv(header: list[str], rows: Iterable[list[str]]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue().encode("gb18030")
