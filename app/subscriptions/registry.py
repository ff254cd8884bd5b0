"""Subscription resources as the Backport IG has them on R4, checked when written, and their delivery state.

A client submits a Subscription as `requested` (or `off`); the server alone makes it `active` (after a successful
handshake) or `error` (delivery keeps failing). The HMAC secret the client gives (extension SECRET on
Subscription.channel) is kept in the delivery state and never stored in, or served with, the resource.
"""

from collections.abc import Sequence
from typing import Any

import orjson
from sqlalchemy import delete, insert, select, update
from sqlalchemy.orm import Session

from app.auth.principal import SYSTEM, Principal
from app.endpoints import is_secure_url
from app.errors import Unprocessable
from app.store import dates
from app.store.rules import WriteRule
from app.subscriptions import topics
from app.subscriptions.tables import subscription_state

BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/"
FILTER = BACKPORT + "backport-filter-criteria"
PAYLOAD_CONTENT = BACKPORT + "backport-payload-content"
HEARTBEAT = BACKPORT + "backport-heartbeat-period"
TIMEOUT = BACKPORT + "backport-timeout"
MAX_COUNT = BACKPORT + "backport-max-count"
PROFILE = BACKPORT + "backport-subscription"
SECRET = "urn:qiao:subscription-secret"
CONTENTS = ("empty", "id-only", "full-resource")
PAYLOAD_TYPES = ("application/fhir+json", "application/json")
CLIENT_STATUSES = ("requested", "off")
MIN_SECRET = 16
DEFAULT_TIMEOUT, MAX_TIMEOUT = 10, 60
DEFAULT_MAX_COUNT, MAX_MAX_COUNT = 100, 1000
_SECRETS = "subscriptions.secrets"  # session.info: Subscription id → the secret its check took out


def _extension(element: dict[str, Any] | None, url: str) -> Any:
    for extension in (element or {}).get("extension") or []:
        if extension.get("url") == url:
            return next((v for k, v in extension.items() if k.startswith("value")), None)
    return None


def _invalid(message: str, where: str) -> Unprocessable:
    return Unprocessable(message, expression=[where])


def check(session: Session, write: Any, principal: Principal) -> None:
    """Refuse what the server cannot honour, naming the element; take the secret out of the resource."""
    content = write.content
    if content is None:
        return
    chosen = topics.topic(str(content.get("criteria", "")))
    for text in _filter_texts(content):
        topics.parse_filter(chosen, text)
    channel = content.get("channel") or {}
    if channel.get("type") != "rest-hook":
        raise _invalid(f"channel type {channel.get('type')!r} is not supported; use rest-hook", "Subscription.channel.type")
    if not is_secure_url(str(channel.get("endpoint") or "")):
        raise _invalid("channel.endpoint must be an https URL (http only on a loopback address)", "Subscription.channel.endpoint")
    payload = str(channel.get("payload") or "").split(";")[0].strip()
    if payload not in PAYLOAD_TYPES:
        raise _invalid(f"channel.payload must be one of {', '.join(PAYLOAD_TYPES)}", "Subscription.channel.payload")
    if _extension(channel.get("_payload"), PAYLOAD_CONTENT) not in CONTENTS:
        raise _invalid(f"channel.payload needs the {PAYLOAD_CONTENT} extension with one of {', '.join(CONTENTS)}",
                       "Subscription.channel.payload")
    if principal is not SYSTEM and content.get("status") not in CLIENT_STATUSES:
        raise _invalid("a client submits a Subscription as requested or off; the server makes it active or error",
                       "Subscription.status")
    secret = _extension(channel, SECRET)
    kept = [e for e in channel.get("extension") or [] if e.get("url") != SECRET]
    if kept:
        channel["extension"] = kept
    else:
        channel.pop("extension", None)
    if secret is not None:
        if not isinstance(secret, str) or len(secret) < MIN_SECRET:
            raise _invalid(f"the {SECRET} extension needs a secret of at least {MIN_SECRET} characters", "Subscription.channel.extension")
        session.info.setdefault(_SECRETS, {})[write.resource_id] = secret
    elif write.current is None or write.current.deleted:
        raise _invalid(f"give the channel an extension {SECRET} (valueString, at least {MIN_SECRET} characters): "
                       "every notification is signed with it (README: Subscriptions)", "Subscription.channel.extension")


def _filter_texts(content: dict[str, Any]) -> list[str]:
    return [str(e.get("valueString")) for e in (content.get("_criteria") or {}).get("extension") or [] if e.get("url") == FILTER]


def after(session: Session, written: Sequence[Any], principal: Principal) -> None:
    """Keep the delivery state in step: a new or re-requested Subscription gets a handshake; `off` stops delivery."""
    secrets: dict[str, str] = session.info.get(_SECRETS, {})
    now = dates.now()
    for stored in written:
        if stored.deleted or stored.content is None:
            session.execute(delete(subscription_state).where(subscription_state.c.subscription_id == stored.resource_id))
            continue
        content = stored.parsed()
        row = _state_row(content)
        secret = secrets.pop(stored.resource_id, None)
        if secret is not None:
            row["secret"] = secret
        found = session.execute(select(subscription_state.c.status).where(subscription_state.c.subscription_id == stored.resource_id)).first()
        if found is None:
            session.execute(insert(subscription_state).values(
                subscription_id=stored.resource_id, org=principal.organization, client_id=principal.client_id,
                access=principal.access, scope=str(principal.scopes), events_count=0, delivered_through=0, failures=0,
                next_attempt_at=now, **row))
        else:
            if row["status"] == "requested":
                row.update(failures=0, next_attempt_at=now, last_error=None)  # the subscriber asks to be tried again
            session.execute(update(subscription_state).where(subscription_state.c.subscription_id == stored.resource_id).values(**row))


def _state_row(content: dict[str, Any]) -> dict[str, Any]:
    channel = content["channel"]
    chosen = topics.topic(content["criteria"])
    timeout = _extension(channel, TIMEOUT)
    max_count = _extension(channel, MAX_COUNT)
    return {
        "topic": chosen.url,
        "filters": orjson.dumps([topics.parse_filter(chosen, t) for t in _filter_texts(content)]).decode(),
        "endpoint": channel["endpoint"],
        "content": _extension(channel.get("_payload"), PAYLOAD_CONTENT),
        "content_type": str(channel["payload"]).split(";")[0].strip(),
        "headers": orjson.dumps([h for h in channel.get("header") or [] if isinstance(h, str) and ":" in h]).decode(),
        "heartbeat_seconds": _extension(channel, HEARTBEAT),
        "timeout_seconds": min(int(timeout), MAX_TIMEOUT) if isinstance(timeout, int) and timeout > 0 else DEFAULT_TIMEOUT,
        "max_count": min(int(max_count), MAX_MAX_COUNT) if isinstance(max_count, int) and max_count > 0 else DEFAULT_MAX_COUNT,
        "status": content.get("status", "requested"),
    }


RULE = WriteRule(frozenset({"Subscription"}), check=check, after=after)
