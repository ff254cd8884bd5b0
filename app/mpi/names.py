"""Chinese personal names for matching: characters, surname (compound ones included), toneless pinyin and its
sound, so that homophones (张伟 / 章玮), names recorded in pinyin ("ZHANG WEI") and names written down by ear in a
region that does not tell zh from z or -ng from -n (陈 chen / 程 cheng) compare as the same sound."""

import re
from dataclasses import dataclass
from functools import lru_cache

from pypinyin import lazy_pinyin

HAN = re.compile(r"[\u3400-\u9fff]")
COMPOUND_SURNAMES = frozenset(
    "欧阳 司马 诸葛 上官 东方 皇甫 令狐 慕容 尉迟 公孙 长孙 宇文 司徒 夏侯 轩辕 端木 独孤 南宫 西门 百里 呼延 申屠 澹台 公羊 赫连"
    " 钟离 太史 万俟 闻人 东郭 拓跋 司空 濮阳 淳于 单于 羊舌 第五 谷梁 乐正 鲜于 闾丘 左丘 梁丘 漆雕 壤驷 公冶 仲孙 巫马".split()
)
#: surnames read otherwise than the character's common reading
SURNAME_READINGS = {"曾": "zeng", "单": "shan", "解": "xie", "仇": "qiu", "区": "ou", "朴": "piao", "查": "zha", "盖": "ge",
                    "任": "ren", "尉": "yu", "乐": "yue", "缪": "miao", "覃": "qin", "翟": "zhai", "种": "chong",
                    "过": "guo", "秘": "bi", "召": "shao", "繁": "po", "宓": "mi", "长": "chang", "万俟": "moqi",
                    "单于": "chanyu", "尉迟": "yuchi"}


#: what many speakers (most of the south) do not tell apart, and so do not write apart: retroflex and flat initials
#: (zh/z, ch/c, sh/s), back and front nasal finals (-ng/-n; an "ng" before a vowel is n and the g of the next syllable)
_FOLDS = ((re.compile(r"([zcs])h"), r"\1"), (re.compile(r"ng(?![aeiouv])"), "n"))


@dataclass(frozen=True)
class Name:
    chars: str | None  # the name in Chinese characters, surname first, no spaces
    surname: str  # pinyin of the surname
    pinyin: str  # pinyin of the whole name, surname first, no spaces
    sound: str = ""  # the pinyin folded (see `sound`); stored, so that an index made before it is re-keyed by a rebuild

    def __post_init__(self) -> None:
        if not self.sound:
            object.__setattr__(self, "sound", sound(self.pinyin))


@lru_cache(maxsize=65536)
def sound(pinyin: str) -> str:
    """Pinyin with the sounds of `_FOLDS` made one (zhang → zan, cheng → cen, shi → si; jianguo stays)."""
    for written, heard in _FOLDS:
        pinyin = written.sub(heard, pinyin)
    return pinyin


def parse(text: str | None, family: str | None = None, given: str | None = None) -> Name | None:
    """A name from FHIR HumanName parts (family/given when present, else text), in characters or in pinyin."""
    whole = (text or f"{family or ''}{given or ''}").strip()
    if not whole:
        return None
    if HAN.search(whole):
        chars = re.sub(r"[\s·•.]", "", whole)
        surname = family.strip() if family and HAN.search(family) else split_surname(chars)
        return Name(chars, _reading(surname, surname=True), _reading(surname, surname=True) + _reading(chars[len(surname):]))
    tokens = [_latin(t) for t in re.split(r"[\s,.·]+", whole) if t]
    tokens = [t for t in tokens if t]
    if not tokens:
        return None
    if family and not HAN.search(family) and _latin(family) == tokens[-1] and len(tokens) > 1:
        tokens = tokens[-1:] + tokens[:-1]  # "Wei Zhang" written given-first with the family name marked
    return Name(None, tokens[0], "".join(tokens))


def split_surname(chars: str) -> str:
    return chars[:2] if chars[:2] in COMPOUND_SURNAMES and len(chars) > 2 else chars[:1]


@lru_cache(maxsize=65536)
def _reading(chars: str, surname: bool = False) -> str:
    if surname and chars in SURNAME_READINGS:
        return SURNAME_READINGS[chars]
    return "".join(_latin(s) for s in lazy_pinyin(chars, errors="ignore"))


def _latin(token: str) -> str:
    """Lower case ASCII letters, with the spellings of ü unified (lü, lyu, lv → lv)."""
    text = re.sub(r"^([ln])yu", r"\1v", token.lower().replace("ü", "v"))
    return re.sub(r"[^a-z]", "", text)
