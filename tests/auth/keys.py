"""Client key pairs and signed assertions, as a SMART backend service would make them."""

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import jwt
import orjson
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
TOKEN_URL = "http://testserver/fhir/auth/token"


@dataclass
class ClientKey:
    algorithm: str  # RS384 or ES384
    kid: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    def __post_init__(self) -> None:
        if self.algorithm.startswith("RS"):
            self.private: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            self.public_jwk = orjson.loads(RSAAlgorithm.to_jwk(self.private.public_key()))
        else:
            self.private = ec.generate_private_key(ec.SECP384R1())
            self.public_jwk = orjson.loads(ECAlgorithm.to_jwk(self.private.public_key()))
        self.public_jwk |= {"kid": self.kid, "alg": self.algorithm}

    @property
    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.public_jwk]}

    def assertion(self, client_id: str, *, aud: str = TOKEN_URL, lifetime: int = 240, jti: str | None = None,
                  algorithm: str | None = None, kid: str | None = None, **claims: Any) -> str:
        now = int(time.time())
        body = {"iss": client_id, "sub": client_id, "aud": aud, "exp": now + lifetime, "jti": jti or uuid.uuid4().hex} | claims
        headers = {"kid": kid or self.kid, "typ": "JWT"}
        return jwt.encode(body, self.private, algorithm=algorithm or self.algorithm, headers=headers)


def token_form(assertion: str, scope: str = "system/*.rs", **extra: str) -> dict[str, str]:
    return {"grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE, "client_assertion": assertion,
            "scope": scope} | extra
