"""Who is asking: the client, the Organization it acts for, its scopes, its access level and purpose of use."""

from dataclasses import dataclass

from app.auth.scopes import Scopes

ORGANIZATION = "organization"  # its own data and the residents it cares for (policy.yaml)
ALL = "all"  # every resident (a regional platform, the CDC); consent denials still hold
UNRESTRICTED = "unrestricted"  # the server itself and the local operator: no policy filter
ACCESS_LEVELS = (ORGANIZATION, ALL)

#: HL7 v3 PurposeOfUse codes (http://terminology.hl7.org/CodeSystem/v3-ActReason) a token may carry
TREATMENT = "TREAT"
BREAK_THE_GLASS = "BTG"
PURPOSES = {TREATMENT, BREAK_THE_GLASS, "ETREAT", "PUBHLTH", "HOPERAT", "HPAYMT", "HRESCH", "HMARKT", "HSYSADMIN"}
EMERGENCY = {BREAK_THE_GLASS, "ETREAT"}


@dataclass(frozen=True)
class Principal:
    client_id: str
    organization: str | None
    scopes: Scopes
    access: str = ORGANIZATION
    purpose: str = TREATMENT
    address: str | None = None

    @property
    def unrestricted(self) -> bool:
        return self.access == UNRESTRICTED

    @property
    def break_glass(self) -> bool:
        return self.purpose in EMERGENCY

    @property
    def every_resident(self) -> bool:
        """Cares for every resident: access "all", or an emergency (break-the-glass) token."""
        return self.access in (ALL, UNRESTRICTED) or self.break_glass


#: The server acting for itself (audit writer, migrations, internal jobs).
SYSTEM = Principal("qiao", None, Scopes((("*", "cruds"),)), access=UNRESTRICTED, purpose="HSYSADMIN")
