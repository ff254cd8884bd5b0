"""Institutions and webhook receivers, as in the referral tests."""

from tests.auth.conftest import ec_key, institutions, login, register, rsa_key  # noqa: F401 (fixtures)
from tests.referrals.conftest import receivers  # noqa: F401 (fixture)
