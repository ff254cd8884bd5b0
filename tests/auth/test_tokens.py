"""SMART Backend Services: discovery, the token endpoint's checks (each rule has a negative test), bearer tokens."""

import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, HTTPServer

import jwt
import orjson
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine

from app import db
from app.auth import smart
from tests.auth.conftest import Headers
from tests.auth.keys import ClientKey, token_form

SCOPE = "system/Patient.rs"


def test_smart_configuration_advertises_backend_services(anonymous_client: TestClient) -> None:
    config = anonymous_client.get("/fhir/.well-known/smart-configuration").json()
    assert config["token_endpoint"] == "http://testserver/fhir/auth/token"
    assert "private_key_jwt" in config["token_endpoint_auth_methods_supported"]
    assert {"RS384", "ES384"} <= set(config["token_endpoint_auth_signing_alg_values_supported"])
    assert "client-confidential-asymmetric" in config["capabilities"]
    security = anonymous_client.get("/fhir/metadata").json()["rest"][0]["security"]
    assert security["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"


@pytest.mark.parametrize("algorithm", ["RS384", "ES384"])
def test_token_for_a_signed_assertion(anonymous_client: TestClient, register: Callable[..., None], algorithm: str) -> None:
    key = ClientKey(algorithm)
    register("chc", "chc-1", scope="system/Patient.rs system/Observation.cruds", key=key)
    response = anonymous_client.post("/fhir/auth/token", data=token_form(key.assertion("chc"), "system/Patient.rs system/Encounter.rs"))
    assert response.status_code == 200
    body = response.json()
    assert body["token_type"] == "bearer" and body["expires_in"] <= 300
    assert body["scope"] == "system/Patient.rs"  # narrowed to what the registration allows
    assert response.headers["cache-control"] == "no-store"
    headers = {"Authorization": f"Bearer {body['access_token']}"}
    assert anonymous_client.get("/fhir/Patient", headers=headers).status_code == 200
    assert anonymous_client.get("/fhir/Encounter", headers=headers).status_code == 403


@pytest.fixture
def chc(register: Callable[..., None], rsa_key: ClientKey) -> ClientKey:
    register("chc", "chc-1", scope="system/*.rs")
    return rsa_key


def _refused(client: TestClient, form: dict[str, str], error: str = "invalid_client") -> str:
    response = client.post("/fhir/auth/token", data=form)
    assert response.status_code in (400, 401), response.text
    assert response.json()["error"] == error
    return str(response.json()["error_description"])


def test_expired_assertion(anonymous_client: TestClient, chc: ClientKey) -> None:
    assert "expired" in _refused(anonymous_client, token_form(chc.assertion("chc", lifetime=-120)))


def test_assertion_living_too_long(anonymous_client: TestClient, chc: ClientKey) -> None:
    assert "5 minutes" in _refused(anonymous_client, token_form(chc.assertion("chc", lifetime=3600)))


def test_wrong_audience(anonymous_client: TestClient, chc: ClientKey) -> None:
    assert "Audience" in _refused(anonymous_client, token_form(chc.assertion("chc", aud="https://elsewhere.example/token")))


def test_replayed_jti(anonymous_client: TestClient, chc: ClientKey) -> None:
    assertion = chc.assertion("chc", jti="once")
    assert anonymous_client.post("/fhir/auth/token", data=token_form(assertion)).status_code == 200
    assert "replay" in _refused(anonymous_client, token_form(assertion))
    assert "replay" in _refused(anonymous_client, token_form(chc.assertion("chc", jti="once")))


def test_unknown_kid(anonymous_client: TestClient, chc: ClientKey) -> None:
    assert "kid" in _refused(anonymous_client, token_form(chc.assertion("chc", kid="not-registered")))


def test_key_of_another_client(anonymous_client: TestClient, chc: ClientKey) -> None:
    stranger = ClientKey("RS384", kid=chc.kid)  # same kid, other key: the signature fails
    assert "Signature" in _refused(anonymous_client, token_form(stranger.assertion("chc")))


@pytest.mark.parametrize("algorithm", ["RS256", "HS256", "none"])
def test_wrong_algorithm(anonymous_client: TestClient, chc: ClientKey, algorithm: str) -> None:
    if algorithm == "HS256":
        assertion = jwt.encode({"iss": "chc", "sub": "chc"}, "a-shared-secret-of-enough-length-000", algorithm="HS256", headers={"kid": chc.kid})
    elif algorithm == "none":
        assertion = jwt.encode({"iss": "chc", "sub": "chc"}, None, algorithm="none", headers={"kid": chc.kid})
    else:
        assertion = chc.assertion("chc", algorithm=algorithm)
    assert "alg" in _refused(anonymous_client, token_form(assertion))


def test_unknown_client_and_sub_mismatch(anonymous_client: TestClient, chc: ClientKey) -> None:
    assert "registered" in _refused(anonymous_client, token_form(chc.assertion("nobody")))
    assert "sub" in _refused(anonymous_client, token_form(chc.assertion("chc", sub="other")))


def test_bad_grant_and_assertion_type(anonymous_client: TestClient, chc: ClientKey) -> None:
    _refused(anonymous_client, token_form(chc.assertion("chc"), grant_type="authorization_code"), "unsupported_grant_type")
    _refused(anonymous_client, token_form(chc.assertion("chc"), client_assertion_type="urn:x"), "invalid_request")
    _refused(anonymous_client, token_form("not-a-jwt"))


def test_scopes_outside_the_registration(anonymous_client: TestClient, chc: ClientKey) -> None:
    _refused(anonymous_client, token_form(chc.assertion("chc"), "system/Patient.cud"), "invalid_scope")
    _refused(anonymous_client, token_form(chc.assertion("chc"), "patient/*.read"), "invalid_scope")


def test_break_the_glass_only_for_clients_allowed(anonymous_client: TestClient, chc: ClientKey) -> None:
    assert "glass" in _refused(anonymous_client, token_form(chc.assertion("chc"), purpose_of_use="BTG"), "invalid_scope")


def test_jwks_url_is_fetched(anonymous_client: TestClient, register: Callable[..., None], ec_key: ClientKey) -> None:
    jwks = orjson.dumps(ec_key.jwks)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(jwks)

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        from app import db
        from app.auth import clients

        url = f"http://127.0.0.1:{server.server_port}/jwks.json"
        with db.transaction() as session:
            clients.add(session, "lab", organization="Organization/lab-1", scope="system/*.rs", jwks_url=url)
        response = anonymous_client.post("/fhir/auth/token", data=token_form(ec_key.assertion("lab")))
        assert response.status_code == 200, response.text
    finally:
        server.shutdown()


def test_requests_without_a_good_token_are_401(anonymous_client: TestClient, login: Callable[..., Headers],
                                               register: Callable[..., None], monkeypatch: pytest.MonkeyPatch) -> None:
    response = anonymous_client.get("/fhir/Patient")
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.json()["resourceType"] == "OperationOutcome"
    assert anonymous_client.get("/fhir/Patient", headers={"Authorization": "Bearer garbage"}).status_code == 401
    register("chc", "chc-1")
    good = login("chc")["Authorization"].split()[1]
    header, payload, signature = good.split(".")
    forged = f"{header}.{payload}.{signature[::-1]}"
    assert anonymous_client.get("/fhir/Patient", headers={"Authorization": f"Bearer {forged}"}).status_code == 401
    from app.config import get_settings

    monkeypatch.setattr(get_settings(), "token_lifetime", 1)
    short = login("chc")
    time.sleep(2.1)
    expired = anonymous_client.get("/fhir/Patient", headers=short)
    assert expired.status_code == 401 and "expired" in expired.text


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(form=st.dictionaries(st.sampled_from(["grant_type", "client_assertion_type", "client_assertion", "scope", "purpose_of_use"]),
                            st.text(max_size=200)),
       authorization=st.text(max_size=300))
def test_no_token_request_or_header_crashes(anonymous_client: TestClient, form: dict[str, str], authorization: str) -> None:
    assert anonymous_client.post("/fhir/auth/token", data=form).status_code in (400, 401)
    try:
        response = anonymous_client.get("/fhir/Patient", headers={"Authorization": authorization})
    except UnicodeEncodeError:
        return  # not a header a client can send
    assert response.status_code == 401


def test_a_cached_token_names_the_address_of_each_request(app_engine: Engine) -> None:
    """The verified token is kept with the address it was last used from; a request from elsewhere is its own."""
    with db.transaction() as session:
        token = smart.mint(session, "hospital", "hosp-1", SCOPE, access="organization", purpose="TREAT", lifetime=60)
        assert smart.principal(session, token, "10.0.0.7").address == "10.0.0.7"
    for address in ("10.0.0.8", "10.0.0.8", "10.0.0.7", None):
        principal = smart.cached_principal(token, address)
        assert principal is not None and principal.address == address
