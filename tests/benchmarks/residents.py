"""A labelled generator of Chinese residents as several institutions record them, with the noise real systems
produce and the hard negatives that must never be merged.

Households share an address and a phone; some hold twins (same birth date, surname, address and phone, different
given names and ID numbers), spouses, parents and children. Namesakes (same name, same birth year, same district)
are planted on purpose. Each person is then registered by 1-4 institutions (a hospital, two community centres, the
public-health system), sometimes twice by the same one, each record with its own noise: homophone characters, a
name in pinyin, missing, mistyped, transposed, legacy 15-digit or lower-case-x ID numbers, a changed or missing
phone, an abbreviated or moved address, a missing insurance number.

    records = generate(50_000, seed=7)   # [(record id, person id, Patient JSON)]
"""

import random
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import date, timedelta
from typing import Any

from pypinyin import lazy_pinyin

from app.mpi.id_number import check_character

SURNAMES = ("王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任沈姚卢姜崔钟谭陆汪范金石廖贾夏韦付方白邹孟熊秦邱江尹"
            "薛闫段雷侯龙史陶黎贺顾毛郝龚邵万钱严覃武戴莫孔向汤")
COMPOUND = ("欧阳", "司马", "诸葛", "上官", "东方", "皇甫")
GIVEN = "伟芳娜秀英敏静丽强磊军洋勇艳杰娟涛明超秀兰霞平刚桂英华建国建华志强丹玉兰萍红玲鹏飞斌宇浩凯晨辉鑫琳雪梅婷慧颖佳欣怡子涵浩然梓轩雨桐思远"
#: characters read alike (the clerk typed the sound, not the character)
HOMOPHONES = {"伟": "玮炜", "芳": "方", "娜": "纳", "敏": "民闽", "静": "晶靖", "丽": "莉立", "强": "蔷", "磊": "蕾", "军": "君钧",
              "洋": "阳扬", "勇": "永涌", "艳": "燕", "杰": "洁捷", "娟": "鹃", "涛": "韬", "明": "铭鸣", "超": "潮", "霞": "侠",
              "平": "萍苹", "刚": "钢", "华": "桦", "红": "虹鸿", "玲": "琳铃", "鹏": "朋", "飞": "菲", "宇": "雨语", "浩": "皓昊",
              "辉": "晖", "琳": "林淋", "梅": "玫", "婷": "亭", "慧": "惠蕙", "颖": "莹", "佳": "嘉", "欣": "心馨", "怡": "仪",
              "张": "章", "李": "黎", "王": "汪", "刘": "柳", "陈": "程", "杨": "阳", "徐": "许", "林": "琳"}
DISTRICTS = {"110101": "东城区", "110102": "西城区", "110105": "朝阳区", "110106": "丰台区", "110108": "海淀区"}
STREETS = ("和平里北街", "安定门外大街", "交道口南大街", "东四十条", "朝阳门北大街", "西直门南大街", "学院路", "中关村大街", "丰台北路", "劲松路")
INSTITUTIONS = ("hosp-1", "chc-1", "chc-2", "ph")


@dataclass(frozen=True)
class Person:
    person_id: str
    surname: str
    given: str
    sex: str  # male / female
    born: date
    region: str
    sequence: int
    phone: str
    street: str
    building: int
    unit: int
    room: int
    insurance: str

    @property
    def id_number(self) -> str:
        body = f"{self.region}{self.born:%Y%m%d}{self.sequence:03d}"
        return body + check_character(body)


def _people(count: int, rng: random.Random) -> list[Person]:
    people: list[Person] = []
    serial = 0

    def person(**fields: Any) -> Person:
        nonlocal serial
        serial += 1
        sex = fields.pop("sex", rng.choice(("male", "female")))
        sequence = rng.randrange(0, 500) * 2 + (1 if sex == "male" else 0)
        base = {"person_id": f"p{serial}", "surname": _surname(rng), "given": _given(rng), "sex": sex,
                "born": date(1935, 1, 1) + timedelta(days=rng.randrange(0, 365 * 85)), "region": rng.choice(list(DISTRICTS)),
                "sequence": sequence, "phone": f"1{rng.choice('3578')}{rng.randrange(10**9):09d}", "street": rng.choice(STREETS),
                "building": rng.randrange(1, 40), "unit": rng.randrange(1, 7), "room": rng.randrange(1, 25) * 100 + rng.randrange(1, 5),
                "insurance": f"{rng.randrange(10**11):011d}"}
        return Person(**{**base, **fields})

    while len(people) < count:
        head = person()
        household = [head]
        shape = rng.random()
        if shape < 0.45:  # a couple, sometimes with a child
            spouse = person(sex="female" if head.sex == "male" else "male", born=head.born + timedelta(days=rng.randrange(-2000, 2000)),
                            region=head.region, phone=head.phone, street=head.street, building=head.building, unit=head.unit, room=head.room)
            household.append(spouse)
            if rng.random() < 0.5:
                household.append(_child(person, head, rng))
        elif shape < 0.47:  # twins: everything shared but the given name and the ID number's sequence
            born = date(1950, 1, 1) + timedelta(days=rng.randrange(0, 365 * 70))
            first = replace(head, born=born)
            household = [first, person(surname=head.surname, born=born, region=head.region, phone=head.phone, street=head.street,
                                       building=head.building, unit=head.unit, room=head.room, given=_twin_name(head.given, rng))]
        elif shape < 0.49:  # a namesake in the same district, born the same year
            household.append(person(surname=head.surname, given=head.given, region=head.region, sex=head.sex,
                                    born=date(head.born.year, rng.randrange(1, 13), rng.randrange(1, 29))))
        people.extend(household)
    return _unique_numbers(people[:count], rng)


def _unique_numbers(people: list[Person], rng: random.Random) -> list[Person]:
    """ID numbers are issued once: a person whose sequence someone of the same region and birth date already holds
    draws another (of their sex's parity). Drawn at random, 782 pairs of the 500,000 people drawn for 1,000,000
    records shared a number (27 for 200,000 records): two people no matcher can tell apart."""
    issued: set[tuple[str, date, int]] = set()
    unique = []
    for p in people:
        sequence = p.sequence
        while (p.region, p.born, sequence) in issued:
            sequence = rng.randrange(0, 500) * 2 + sequence % 2
        issued.add((p.region, p.born, sequence))
        unique.append(p if sequence == p.sequence else replace(p, sequence=sequence))
    return unique


def _child(person: Any, parent: Person, rng: random.Random) -> Person:
    born = parent.born + timedelta(days=rng.randrange(20 * 365, 35 * 365))
    if born > date(2024, 6, 1):
        born = parent.born - timedelta(days=rng.randrange(20 * 365, 35 * 365))  # a parent, then
    return person(surname=parent.surname, born=born, region=parent.region, phone=parent.phone,
                  street=parent.street, building=parent.building, unit=parent.unit, room=parent.room)


def _surname(rng: random.Random) -> str:
    if rng.random() < 0.01:
        return rng.choice(COMPOUND)
    # common surnames are much more common (Zipf-like), so that names repeat as they do
    return SURNAMES[min(int(rng.paretovariate(1.1)) - 1, len(SURNAMES) - 1) if rng.random() < 0.6 else rng.randrange(len(SURNAMES))]


def _given(rng: random.Random) -> str:
    return "".join(rng.choice(GIVEN) for _ in range(1 if rng.random() < 0.35 else 2))


def _twin_name(given: str, rng: random.Random) -> str:
    """Another given name, often sharing the first character (建国, 建华), never the same one."""
    while True:
        other = _given(rng)
        name = given[:1] + other[-1] if len(given) == 2 and rng.random() < 0.5 else other
        if name != given:
            return name


# --- records ---------------------------------------------------------------------------------------------------


def generate(count: int, seed: int = 7) -> list[tuple[str, str, dict[str, Any]]]:
    """About `count` source records of about count/2 people: (record id, person id, Patient)."""
    rng = random.Random(seed)
    people = _people(max(count // 2, 2), rng)
    records: list[tuple[str, str, dict[str, Any]]] = []
    for person in people:
        institutions = rng.sample(INSTITUTIONS, rng.choice((1, 1, 2, 2, 2, 3, 4)))
        if rng.random() < 0.02:
            institutions.append(institutions[0])  # registered twice by the same system
        for institution in institutions:
            records.append((f"r{len(records) + 1}", person.person_id, _record(person, institution, rng)))
            if len(records) >= count:
                return records
    return records


def _record(p: Person, institution: str, rng: random.Random) -> dict[str, Any]:
    patient: dict[str, Any] = {"resourceType": "Patient", "identifier": [
        {"system": f"urn:oid:2.16.156.10011.0.{INSTITUTIONS.index(institution) + 1}.1", "value": f"{institution}-{rng.randrange(10**8)}"}]}
    number = _noisy_id(p, rng)
    if number:
        patient["identifier"].append({"system": "urn:oid:2.16.156.10011.1.3", "value": number})
    if rng.random() < 0.6:
        patient["identifier"].append({"system": "urn:oid:2.16.156.10011.1.15", "value": p.insurance})
    patient["name"] = [_noisy_name(p, institution, rng)]
    patient["gender"] = p.sex if rng.random() > 0.01 else "unknown"
    if rng.random() > 0.03:
        born = p.born
        if rng.random() < 0.02:  # a day or month keyed wrong
            born = born.replace(day=min(born.day % 28 + 1, 28))
        patient["birthDate"] = born.isoformat()
    phone = p.phone if rng.random() > 0.12 else f"1{rng.choice('3578')}{rng.randrange(10**9):09d}"
    if rng.random() > 0.1:
        patient["telecom"] = [{"system": "phone", "value": phone if rng.random() > 0.2 else f"+86 {phone[:3]} {phone[3:7]} {phone[7:]}"}]
    if rng.random() > 0.08:
        patient["address"] = [_noisy_address(p, rng)]
    return patient


def _noisy_id(p: Person, rng: random.Random) -> str | None:
    roll = rng.random()
    number = p.id_number
    if roll < 0.18:
        return None
    if roll < 0.21:  # one digit mistyped
        i = rng.randrange(17)
        return number[:i] + str((int(number[i]) + rng.randrange(1, 10)) % 10) + number[i + 1:]
    if roll < 0.23:  # two neighbours swapped
        i = rng.randrange(16)
        if number[i] != number[i + 1]:
            return number[:i] + number[i + 1] + number[i] + number[i + 2:]
    if roll < 0.28 and p.born.year < 2000:  # the legacy 15-digit number
        return number[:6] + number[8:17]
    return number.lower() if rng.random() < 0.3 else number


def _noisy_name(p: Person, institution: str, rng: random.Random) -> dict[str, Any]:
    surname, given = p.surname, p.given
    if rng.random() < 0.06:  # a homophone typed for one character
        chars = list(surname + given)
        options = [i for i, c in enumerate(chars) if c in HOMOPHONES]
        if options:
            i = rng.choice(options)
            chars[i] = rng.choice(HOMOPHONES[chars[i]])
            surname, given = "".join(chars[:len(surname)]), "".join(chars[len(surname):])
    if institution == "hosp-1" and rng.random() < 0.1:  # recorded in pinyin
        family, first = "".join(lazy_pinyin(surname)).upper(), "".join(lazy_pinyin(given)).upper()
        return {"text": f"{family} {first}", "family": family, "given": [first]}
    return {"text": surname + given, "family": surname, "given": [given]}


def _noisy_address(p: Person, rng: random.Random) -> dict[str, Any]:
    street, building, unit, room, region = p.street, p.building, p.unit, p.room, p.region
    if rng.random() < 0.05:  # moved
        street, building, region = rng.choice(STREETS), rng.randrange(1, 40), rng.choice(list(DISTRICTS))
    district = DISTRICTS[region]
    if rng.random() < 0.4:
        line = f"{street}{building}-{unit}-{room}"
    else:
        line = f"{street}{building}号楼{unit}单元{room}室"
    address = {"use": "home", "state": "北京市", "city": "北京市", "district": district, "line": [line]}
    if rng.random() < 0.5:
        address["text"] = f"北京市{district}{line}"
    return address


def true_pairs(records: list[tuple[str, str, dict[str, Any]]]) -> Iterator[tuple[str, str]]:
    by_person: dict[str, list[str]] = {}
    for record_id, person_id, _ in records:
        by_person.setdefault(person_id, []).append(record_id)
    for members in by_person.values():
        for i, a in enumerate(members):
            for b in members[i + 1:]:
                yield a, b
