"""The referral Task's stages (stages.yaml, data rather than code), and how to tell a referral's Tasks apart: the
referral's tracker (a Task whose focus is a ServiceRequest) and the follow-up Tasks the loop opens."""

from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, TypeGuard

import yaml

from app.auth.relations import reference_id
from app.errors import Unprocessable

STAGES_FILE = Path(__file__).with_name("stages.yaml")
TASK_CODE_SYSTEM = "urn:qiao:task-code"
FOLLOW_UP = "referral-follow-up"


@dataclass(frozen=True)
class Stage:
    code: str
    status: str
    display: str
    bser: str | None = None
    needs_reason: bool = False


@dataclass(frozen=True)
class Machine:
    system: str
    stages: dict[str, Stage]
    by_status: dict[str, str]
    initial: frozenset[str]
    transitions: dict[str, dict[str, str]] = field(default_factory=dict)

    def allowed(self, stage: str, roles: set[str]) -> list[str]:
        return [to for to, actor in self.transitions.get(stage, {}).items() if actor in roles]


@cache
def machine() -> Machine:
    data = yaml.safe_load(STAGES_FILE.read_text(encoding="utf-8"))
    stages = {code: Stage(code, **spec) for code, spec in data["stages"].items()}
    return Machine(data["system"], stages, data["by_status"], frozenset(data["initial"]), data["transitions"])


def is_referral(content: dict[str, Any] | None) -> bool:
    return _is_task(content) and reference_id(content.get("focus"), "ServiceRequest") is not None


def has_task_code(content: dict[str, Any] | None, code: str) -> bool:
    return _is_task(content) and any(c.get("system") == TASK_CODE_SYSTEM and c.get("code") == code
                                     for c in (content.get("code") or {}).get("coding") or [])


def _is_task(content: dict[str, Any] | None) -> TypeGuard[dict[str, Any]]:
    return content is not None and content.get("resourceType") == "Task"


def is_follow_up(content: dict[str, Any] | None) -> bool:
    return has_task_code(content, FOLLOW_UP)


def stage_of(content: dict[str, Any]) -> str:
    """The stage a Task is in: its businessStatus from Qiao's CodeSystem, else the one its status means."""
    rules = machine()
    codes = [c.get("code") for c in (content.get("businessStatus") or {}).get("coding") or [] if c.get("system") == rules.system]
    status = str(content.get("status"))
    if codes:
        stage = rules.stages.get(str(codes[0]))
        if stage is None:
            raise Unprocessable(f"businessStatus {codes[0]!r} is not a stage of {rules.system} (known: {', '.join(rules.stages)})",
                                expression=["Task.businessStatus"])
        if stage.status != status:
            raise Unprocessable(f"businessStatus {stage.code!r} goes with status {stage.status!r}, not {status!r}",
                                expression=["Task.status"])
        return stage.code
    return rules.by_status[status]


def business_status(code: str) -> dict[str, Any]:
    stage = machine().stages[code]
    return {"coding": [{"system": machine().system, "code": code, "display": stage.display}], "text": stage.display}
