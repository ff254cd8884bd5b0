"""The clock: one process runs a pass at a time, and a pass's watermark only moves once its stretch is handled."""

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from app import clock, db


def recording(seen: list[tuple[int, int]], fail: bool = False) -> clock.Pass:
    def due(_session: Session, after: int, until: int) -> list[str]:
        seen.append((after, until))
        return ["a", "b"]

    def handle(_session: Session, keys: list[str]) -> int:
        if fail:
            raise RuntimeError("handling failed")
        return len(keys)

    return clock.Pass("test", due, handle)


def clock_said(capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    """What `qiao clock` printed: {pass: "changed N" or why it did not run}."""
    return dict(line.split("\t", 1) for line in capsys.readouterr().out.splitlines())


def watermark() -> int:
    with db.read_session() as session:
        return int(session.execute(select(clock.clock_pass.c.done_until).where(clock.clock_pass.c.name == "test")).scalar_one())


def test_each_pass_is_handed_the_stretch_it_has_not_seen(app_engine: Engine) -> None:
    seen: list[tuple[int, int]] = []
    assert clock.run([recording(seen)]) == {"test": 2}
    assert clock.run([recording(seen)]) == {"test": 2}
    assert seen[0][0] == 0 and seen[1][0] == seen[0][1] < seen[1][1] == watermark()


def test_a_pass_another_process_holds_is_left_to_it(app_engine: Engine) -> None:
    seen: list[tuple[int, int]] = []
    with db.transaction() as session:
        assert clock._claim(session, "test") == 0
    assert clock.run([recording(seen)]) == {"test": None}
    assert seen == []


def test_a_failed_pass_keeps_its_watermark_and_its_stretch_is_handed_again(app_engine: Engine) -> None:
    seen: list[tuple[int, int]] = []
    with pytest.raises(RuntimeError):
        clock.run([recording(seen, fail=True)])
    assert watermark() == 0
    assert clock.run([recording(seen)]) == {"test": 2}
    assert seen[1][0] == 0
