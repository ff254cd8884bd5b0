"""The HL7 v2 adapter and the mapping functions, without a database."""

import logging
from typing import cast

import hl7
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.base import MessageError
from adapters.hl7v2 import parse
from app.mapping import functions
from tests.ingest.messages import adt, oru


@pytest.mark.parametrize(("raw", "default", "codec"), [
    (adt().encode("gb18030"), None, "gb18030"),  # detected: not UTF-8, valid GB18030
    (adt().encode("utf-8"), None, "utf-8"),
    (adt(charset_field="GB 18030-2000").encode("gb18030"), "utf-8", "gb18030"),  # MSH-18 wins over the default
    (adt(charset_field="UNICODE UTF-8").encode("utf-8"), "gb18030", "utf-8"),  # UTF-8 bytes are valid GB18030 too
    (adt(charset_field="UNICODE UTF-8").encode("gb18030"), None, "gb18030"),  # MSH-18 wrong: the bytes decide
    (b"\xef\xbb\xbf" + adt().encode("utf-8"), "gb18030", "utf-8"),  # a BOM says UTF-8
])
def test_the_character_set(raw: bytes, default: str | None, codec: str) -> None:
    record = parse.parse(raw, default_charset=default)
    assert record.charset == codec and record.scope.get("PID-5.1") == "张"


def test_segment_ends_escapes_repetitions_and_selectors() -> None:
    text = adt().replace("\r", "\r\n").replace("和平里街道1号", "和平里\\T\\1号")
    scope = parse.parse(text.encode()).scope
    assert scope.get("PID-3[5=NNCHN].1") == "110105194912310021" and scope.get("PID-3[5=MR|PI].1") == "MZ1001"
    assert scope.get("PID-3[2].5") == "NNCHN" and scope.get("PID-3[3].1") is None
    assert scope.get("PID-11.1") == "和平里&1号" and scope.get("PID-99") is None and scope.get("ZZZ-1") is None
    assert [s.get(".1") for s in scope.each("PID-3")] == ["MZ1001", "110105194912310021"]
    assert scope.get("MSH-9.2") == "A04" and scope.get("MSH-2") == "^~\\&"


def test_a_segment_picked_by_a_field_value() -> None:
    scope = parse.parse(oru().encode()).scope
    assert scope.get("OBX(3.1=DBP|8462-4)-5") == "95" and scope.get("OBX(3=GLU)-1") == "7"
    assert scope.get("OBX(3.1=CREA)-5") is None and scope.get("OBX-5") == "150"
    with pytest.raises(MessageError):
        scope.each("OBX(3.1=SBP)-5")


def _python_hl7_tree(text: str) -> list[list[list[parse.Repetition]]]:
    """Every field of every segment as python-hl7 parses the whole message, as lists, each value unescaped."""
    message = hl7.parse(text)

    def field(value: object) -> list[parse.Repetition]:
        return [[[message.unescape(str(leaf)) for leaf in _flat(c)] for c in _children(r)] for r in _children(value)]

    return [[field(f) for f in segment[3 if i == 0 else 1:]] for i, segment in enumerate(message)]


def _children(part: object) -> list[object]:
    return list(part) if isinstance(part, list) else [part]


def _flat(part: object) -> list[object]:
    return [leaf for item in _children(part) for leaf in _flat(item)] if isinstance(part, list) else [part]


_VALUE = st.text(alphabet=st.sampled_from(list("ab张伟1 .^~&|\\FSTRE")), max_size=12)
_SEGMENT = st.tuples(st.sampled_from(["PID", "OBX", "ZXY", "NTE"]), st.lists(_VALUE, max_size=8))


@settings(max_examples=300, deadline=None)
@given(st.lists(_SEGMENT, min_size=1, max_size=5), st.lists(_VALUE, max_size=8))
def test_fields_split_when_read_are_what_python_hl7_parses(segments: list[tuple[str, list[str]]], header: list[str]) -> None:
    """The adapter splits a field only when a path reads it; each must come out as python-hl7 splits the whole
    message (repetitions, components, subcomponents, escape sequences), whatever the separators and escapes in it.
    (MSH-1 and MSH-2 are the separators themselves.)"""
    msh = ["MSH", "^~\\&", "HIS", "DCH", "QIAO", "QIAO", "20261120093000", "", "ORU^R01", "1", *header]
    text = "\r".join(["|".join(msh), *("|".join([name, *fields]) for name, fields in segments)])
    expected = _python_hl7_tree(text.strip())
    message = cast(parse.Hl7Scope, parse.parse(text.encode()).scope).message
    got = [[message.split(f) for f in fields[3 if i == 0 else 1:]] for i, fields in enumerate(message.segments)]
    assert got == expected


def test_a_field_with_a_broken_escape_is_read_and_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    scope = parse.parse(adt(family="张\\X4E\\", given="伟\\Q\\").encode()).scope
    assert scope.get("PID-5.1") == "张N" and scope.get("PID-5.2") == "伟"
    assert not [r for r in caplog.records if "张" in r.getMessage() or "伟" in r.getMessage()]


@pytest.mark.parametrize("raw", [b"", b"PID|1", b"MSH|", "MSH|^~\\&|无效".encode("utf-16")])
def test_what_is_not_a_message_is_named(raw: bytes) -> None:
    with pytest.raises(MessageError) as error:
        parse.parse(raw)
    assert error.value.location and error.value.location.startswith("MSH")


def test_a_file_of_several_messages_splits_at_each_header() -> None:
    data = ("FHS|^~\\&\rBHS|^~\\&\r" + adt() + "\n" + adt(control_id="X2") + "BTS|2\rFTS|1\r").encode()
    assert [parse.parse(m).control_id for m in parse.split_batch(data)] == ["MSG0001", "X2"]


@pytest.mark.parametrize(("value", "expected"), [
    ("20261120093000", "2026-11-20T09:30:00+08:00"),
    ("202611200930", "2026-11-20T09:30:00+08:00"),
    ("20261120093000.123+0000", "2026-11-20T09:30:00.123+00:00"),
    ("20261120", "2026-11-20"),
    ("202611", "2026-11"),
])
def test_hl7_times_keep_precision_and_default_to_shanghai(value: str, expected: str) -> None:
    assert functions.hl7_datetime(value) == expected


@pytest.mark.parametrize("value", ["2026-11-20", "20261332", "yesterday"])
def test_bad_hl7_times_are_errors(value: str) -> None:
    with pytest.raises(ValueError):
        functions.hl7_datetime(value)


def test_id_numbers_are_normalised_and_legacy_ones_upgraded() -> None:
    assert functions.id_card("110105491231002") == "11010519491231002X"
    assert functions.id_card(" 11010519491231002x ") == "11010519491231002X"
    assert functions.check_character("44052418800101001") == "4"


def test_observation_values_by_type() -> None:
    assert functions.observation_value("NM", "7.8", "mmol/L", "mmol/L") == {
        "valueQuantity": {"value": 7.8, "unit": "mmol/L", "system": "http://unitsofmeasure.org", "code": "mmol/L"}}
    assert functions.observation_value("SN", "<^3.9", "mmol/L", None) == {"valueQuantity": {"value": 3.9, "unit": "mmol/L", "comparator": "<"}}
    assert functions.observation_value("ST", "阴性", None) == {"valueString": "阴性"}
    with pytest.raises(ValueError):
        functions.observation_value("NM", "high", "mmol/L")
    with pytest.raises(ValueError):
        functions.observation_value("ED", "x", None)
