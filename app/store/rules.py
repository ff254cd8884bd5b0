"""Write rules: what other parts of Qiao add to every write of some resource types, inside its transaction.

A rule's `check` runs with the authorization of each write (it may refuse it, or complete server-managed elements);
its `after` runs once the batch is stored (it may write more: masters, notifications, the next referral). One
mechanism, so that REST, transaction Bundles and adapters get the same behaviour.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session

from app.auth.principal import Principal

if TYPE_CHECKING:
    from app.store.repository import Stored, Write


@dataclass(frozen=True)
class WriteRule:
    types: frozenset[str]
    check: Callable[[Session, "Write", Principal], None] | None = None
    after: Callable[[Session, Sequence["Stored"], Principal], None] | None = None


@cache
def all_rules() -> tuple[WriteRule, ...]:
    """In the order they run (a change is announced before the writes it causes). Imported late: these modules
    write through the store themselves."""
    from app.cdc import followups, indicators, registries
    from app.mapping import concept_maps, questionnaires
    from app.mpi import facts, linker
    from app.referrals import workflow
    from app.subscriptions import outbox, registry

    return (indicators.RULE, concept_maps.RULE, questionnaires.RULE, linker.RULE, facts.RULE, registries.RULE, followups.RULE, registry.RULE, outbox.RULE, workflow.RULE)


def check(session: Session, write: "Write", principal: Principal) -> None:
    for rule in all_rules():
        if rule.check is not None and write.resource_type in rule.types:
            rule.check(session, write, principal)


def after(session: Session, stored: Sequence["Stored"], principal: Principal) -> None:
    for rule in all_rules():
        if rule.after is None:
            continue
        mine = [s for s in stored if s.resource_type in rule.types]
        if mine:
            rule.after(session, mine, principal)
