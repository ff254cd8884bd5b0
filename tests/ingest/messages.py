"""HL7 v2 test messages, as a Chinese HIS sends them (GB18030, CR segment ends unless a test says otherwise)."""

ID_CARD = "110105194912310021"
LEGACY_ID_CARD = "110105491231002"  # 15 digits: becomes 11010519491231002X
PHONE = "13912345678"


def adt(event: str = "A04", *, control_id: str = "MSG0001", mrn: str = "MZ1001", sex: str = "1", family: str = "张",
        given: str = "三", id_card: str = ID_CARD, visit: str = "V2001", charset_field: str = "") -> str:
    return "\r".join([
        f"MSH|^~\\&|HIS|DCH|QIAO|QIAO|20261120093000||ADT^{event}^ADT_A01|{control_id}|P|2.4||||||{charset_field}",
        f"EVN|{event}|20261120093000",
        f"PID|1||{mrn}^^^DCH^MR~{id_card}^^^^NNCHN||{family}^{given}||19491231|{sex}|||和平里街道1号^^北京市^北京市^100013^^^^东城区||{PHONE}",
        f"PV1|1|O|内科^^^DCH||||||||||||||||{visit}|||||||||||||||||||||||||20261120090000",
    ]) + "\r"


def oru(*, control_id: str = "LAB0001", mrn: str = "MZ1001", order: str = "R9001", results: int = 10) -> str:
    codes = [("SBP", "收缩压", "NM", "150", "mmHg"), ("DBP", "舒张压", "NM", "95", "mmHg"), ("HR", "心率", "NM", "78", "次/分"),
             ("WT", "体重", "NM", "70.5", "kg"), ("HT", "身高", "NM", "170", "cm"), ("BMI", "体重指数", "NM", "24.4", "kg/m2"),
             ("GLU", "空腹血糖", "NM", "7.8", "mmol/L"), ("HBA1C", "糖化血红蛋白", "NM", "6.9", "%"),
             ("TC", "总胆固醇", "NM", "5.2", "mmol/L"), ("NOTE", "医生意见", "ST", "建议复查\\F\\随访", "")]
    segments = [
        f"MSH|^~\\&|LIS|DCH|QIAO|QIAO|20261120101500||ORU^R01^ORU_R01|{control_id}|P|2.5.1",
        f"PID|1||{mrn}^^^DCH^MR||张^三||19491231|1",
        f"OBR|1||{order}|LAB01^慢病随访检查|||20261120100000||||||||||||||||F",
    ]
    for i, (code, name, kind, value, unit) in enumerate(codes[:results], start=1):
        segments.append(f"OBX|{i}|{kind}|{code}^{name}||{value}|{unit}|||||F|||20261120100000")
    return "\r".join(segments) + "\r"


def gb18030(text: str) -> bytes:
    return text.encode("gb18030")


def orm(orders: list[tuple[str, ...]], *, control_id: str = "ORD0001", mrn: str = "MZ1001", visit: str = "V2001",
        kind: str = "ORM^O01^ORM_O01", version: str = "2.4", charset_field: str = "") -> str:
    """An order message: PID, PV1, then per order ORC, OBR and an NTE when the order has a note. Each order is
    (order control, placer number, code, name, note, order status, priority)."""
    segments = [
        f"MSH|^~\\&|HIS|DCH|QIAO|QIAO|20261120094500||{kind}|{control_id}|P|{version}||||||{charset_field}",
        f"PID|1||{mrn}^^^DCH^MR||张^三||19491231|1",
        f"PV1|1|O|内科^^^DCH||||||||||||||||{visit}",
    ]
    for control, placer, code, name, note, status, priority in orders:
        segments.append(f"ORC|{control}|{placer}|F{placer}||{status}||^^^^^{priority}||20261120094000|||D01^李^医生")
        segments.append(f"OBR|1|{placer}|F{placer}|{code}^{name}|||||||||||||||||||||||^^^^^{priority}||||I10^高血压^I10")
        if note:
            segments.append(f"NTE|1||{note}")
    return "\r".join(segments) + "\r"
