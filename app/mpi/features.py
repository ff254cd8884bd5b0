"""What matching compares, read once from a Patient resource and normalised: the ID number (upgraded, judged), the
name (characters and pinyin), birth date and sex (stated, else what a valid ID number embeds), phones, medical
insurance number and address (region and dwelling numbers)."""

import re
import unicodedata
from dataclasses import asdict, dataclass
from typing import Any

from app.mpi import id_number, names
from app.mpi.names import Name

INSURANCE_SYSTEM = "urn:oid:2.16.156.10011.1.15"
_DIVISION = re.compile(r"AdministrativeDivision", re.IGNORECASE)
_DWELLING = (
    re.compile(r"(\d+)(?:号楼|栋|幢|座|号院|楼)(\d+)单元(\d+)(?:室|号|房)?"),
    re.compile(r"(\d+)-(\d+)-(\d+)"),
    re.compile(r"(\d+)(?:号楼|栋|幢|座)(\d+)(?:室|号|房)"),
)
_REGION_SUFFIX = re.compile(r"(自治县|自治旗|新区|区|县|市|旗)$")


@dataclass(frozen=True)
class Features:
    id_number: str | None = None
    id_valid: bool = False
    name: Name | None = None
    birth_date: str | None = None
    birth_conflict: bool = False  # the stated birth date is not the one the valid ID number embeds
    sex: str | None = None
    phones: tuple[str, ...] = ()
    insurance: str | None = None
    region: str | None = None
    address: str | None = None
    dwelling: str | None = None
    street: str | None = None  # what precedes the dwelling numbers: the street or the estate

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "name": asdict(self.name) if self.name else None}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Features":
        name = data.get("name")
        return cls(**{**data, "name": Name(**name) if name else None, "phones": tuple(data.get("phones") or ())})


def of_patient(patient: dict[str, Any]) -> Features:
    number = id_number.normalise(_identifier(patient, id_number.SYSTEM))
    valid = id_number.is_valid(number)
    embedded = id_number.birth_date(number) if valid and number else None
    stated = (patient.get("birthDate") or "")[:10] or None
    birth = stated or (embedded.isoformat() if embedded else None)
    sex = patient.get("gender") if patient.get("gender") in ("male", "female") else None
    if sex is None and valid and number:
        sex = id_number.sex(number)
    region, address, dwelling, street = _address(patient)
    return Features(
        id_number=number,
        id_valid=valid,
        name=_name(patient),
        birth_date=birth,
        birth_conflict=bool(embedded and stated and embedded.isoformat() != stated),
        sex=sex,
        phones=tuple(sorted({p for p in map(phone, _phones(patient)) if p})),
        insurance=(_identifier(patient, INSURANCE_SYSTEM) or "").strip().upper() or None,
        region=region,
        address=address,
        dwelling=dwelling,
        street=street,
    )


def _identifier(patient: dict[str, Any], system: str) -> str | None:
    for identifier in patient.get("identifier") or []:
        if identifier.get("system") == system and identifier.get("value"):
            return str(identifier["value"])
    return None


def _name(patient: dict[str, Any]) -> Name | None:
    """The official name if marked, else the first; Chinese characters preferred over a pinyin spelling."""
    candidates = sorted(patient.get("name") or [], key=lambda n: (n.get("use") not in (None, "official", "usual")))
    parsed = [names.parse(n.get("text"), n.get("family"), "".join(n.get("given") or [])) for n in candidates]
    present = [n for n in parsed if n]
    return next((n for n in present if n.chars), present[0] if present else None)


def _phones(patient: dict[str, Any]) -> list[str]:
    return [t.get("value") or "" for t in patient.get("telecom") or [] if t.get("system") in (None, "phone", "sms")]


def phone(value: str) -> str | None:
    """Digits only, country code dropped; too short to identify anything is None."""
    digits = re.sub(r"\D", "", unicodedata.normalize("NFKC", value))
    for prefix in ("0086", "86"):
        if digits.startswith(prefix) and len(digits) - len(prefix) in (11, 10, 12):
            digits = digits[len(prefix):]
    return digits if len(digits) >= 7 else None


def _address(patient: dict[str, Any]) -> tuple[str | None, str | None, str | None, str | None]:
    """(region, normalised street address, dwelling numbers "building-unit-room", the street before them) of the
    home (or first) address."""
    addresses = sorted(patient.get("address") or [], key=lambda a: a.get("use") != "home")
    if not addresses:
        return None, None, None, None
    address = addresses[0]
    region = None
    for extension in address.get("extension") or []:
        if _DIVISION.search(extension.get("url", "")):
            region = str(extension.get("valueCode") or extension.get("valueString") or "")[:6] or None
    district = _clean(address.get("district") or "")
    region = region or (_REGION_SUFFIX.sub("", district) if district else None)
    parts = [address.get("text") or "", *(address.get("line") or [])]
    street = _clean("".join(parts))
    for name in (address.get("state"), address.get("city"), address.get("district")):
        if name:
            street = street.replace(_clean(name), "")
    dwelling = before = None
    for pattern in _DWELLING:
        found = pattern.search(street)
        if found:
            dwelling = "-".join(str(int(g)) for g in found.groups())
            before = street[:found.start()] or None
            break
    return region, street or None, dwelling, before


def _clean(text: str) -> str:
    return re.sub(r"[\s,，。.()（）]", "", unicodedata.normalize("NFKC", text))
