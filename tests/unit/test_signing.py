"""Unit tests of manager.signing against the Standard Webhooks example."""

from __future__ import annotations

import base64

import pytest

from manager.errors import ManagerError
from manager.signing import (
    SignatureError,
    generate_secret,
    secret_key,
    sign,
    signature_headers,
    verify,
)

# The example published with the Standard Webhooks specification.
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TIMESTAMP = 1614265330
SPEC_BODY = b'{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def spec_headers(**overrides: str) -> dict[str, str]:
    headers = {
        "webhook-id": SPEC_ID,
        "webhook-timestamp": str(SPEC_TIMESTAMP),
        "webhook-signature": SPEC_SIGNATURE,
    }
    headers.update({name.replace("_", "-"): value for name, value in overrides.items()})
    return headers


def test_sign_reproduces_the_specification_example() -> None:
    assert sign(SPEC_SECRET, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY) == SPEC_SIGNATURE


def test_signature_headers_carry_id_timestamp_and_signature() -> None:
    headers = signature_headers(SPEC_SECRET, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY)

    assert headers == spec_headers()


def test_verify_accepts_the_specification_example() -> None:
    verify(SPEC_SECRET, spec_headers(), SPEC_BODY, now=SPEC_TIMESTAMP)


def test_verify_accepts_header_names_in_any_case() -> None:
    headers = {name.title(): value for name, value in spec_headers().items()}

    verify(SPEC_SECRET, headers, SPEC_BODY, now=SPEC_TIMESTAMP)


def test_verify_refuses_a_tampered_body() -> None:
    with pytest.raises(SignatureError, match="no webhook-signature matches"):
        verify(SPEC_SECRET, spec_headers(), b'{"test": 2432232315}', SPEC_TIMESTAMP)


def test_verify_refuses_another_secret() -> None:
    with pytest.raises(SignatureError, match="no webhook-signature matches"):
        verify(generate_secret(), spec_headers(), SPEC_BODY, SPEC_TIMESTAMP)


def test_verify_refuses_a_changed_id() -> None:
    headers = spec_headers(webhook_id="msg_other")

    with pytest.raises(SignatureError, match="no webhook-signature matches"):
        verify(SPEC_SECRET, headers, SPEC_BODY, SPEC_TIMESTAMP)


@pytest.mark.parametrize("skew", [301, -301, 86_400])
def test_verify_refuses_a_timestamp_outside_the_window(skew: int) -> None:
    with pytest.raises(SignatureError, match="more than 300s away from now"):
        verify(SPEC_SECRET, spec_headers(), SPEC_BODY, now=SPEC_TIMESTAMP + skew)


@pytest.mark.parametrize("skew", [300, -300])
def test_verify_accepts_the_edges_of_the_window(skew: int) -> None:
    verify(SPEC_SECRET, spec_headers(), SPEC_BODY, now=SPEC_TIMESTAMP + skew)


def test_verify_honours_a_custom_tolerance() -> None:
    with pytest.raises(SignatureError, match="more than 10s away"):
        verify(SPEC_SECRET, spec_headers(), SPEC_BODY, SPEC_TIMESTAMP + 11, 10)


@pytest.mark.parametrize("value", ["soon", "-1614265330", "1614265330.0", " 16"])
def test_verify_refuses_a_malformed_timestamp(value: str) -> None:
    headers = spec_headers(webhook_timestamp=value)

    with pytest.raises(SignatureError, match="is not a Unix timestamp"):
        verify(SPEC_SECRET, headers, SPEC_BODY, SPEC_TIMESTAMP)


@pytest.mark.parametrize(
    "signatures",
    [
        f"v1,Zm9yZ2VkIHNpZ25hdHVyZQ== {SPEC_SIGNATURE}",
        f"{SPEC_SIGNATURE} v1,Zm9yZ2VkIHNpZ25hdHVyZQ==",
        f"v1a,abc  {SPEC_SIGNATURE} ",
    ],
)
def test_verify_accepts_one_match_among_several_signatures(signatures: str) -> None:
    headers = spec_headers(webhook_signature=signatures)

    verify(SPEC_SECRET, headers, SPEC_BODY, SPEC_TIMESTAMP)


@pytest.mark.parametrize(
    "signatures",
    [
        "v1,Zm9yZ2VkIHNpZ25hdHVyZQ== v1,b3RoZXI=",
        SPEC_SIGNATURE.replace("v1,", "v2,"),
        SPEC_SIGNATURE.removeprefix("v1,"),
        SPEC_SIGNATURE + "x",
        "v1,ü" + SPEC_SIGNATURE,
    ],
)
def test_verify_refuses_when_no_signature_matches(signatures: str) -> None:
    headers = spec_headers(webhook_signature=signatures)

    with pytest.raises(SignatureError, match="no webhook-signature matches"):
        verify(SPEC_SECRET, headers, SPEC_BODY, SPEC_TIMESTAMP)


@pytest.mark.parametrize(
    "missing", ["webhook-id", "webhook-timestamp", "webhook-signature"]
)
def test_verify_names_a_missing_header(missing: str) -> None:
    headers = spec_headers()
    del headers[missing]

    with pytest.raises(SignatureError, match=f"missing {missing} header"):
        verify(SPEC_SECRET, headers, SPEC_BODY, SPEC_TIMESTAMP)


def test_verify_treats_an_empty_header_as_missing() -> None:
    headers = spec_headers(webhook_signature="")

    with pytest.raises(SignatureError, match="missing webhook-signature header"):
        verify(SPEC_SECRET, headers, SPEC_BODY, SPEC_TIMESTAMP)


def test_signature_errors_belong_to_the_package_tree() -> None:
    assert issubclass(SignatureError, ManagerError)


def test_generated_secrets_hold_32_random_bytes() -> None:
    first, second = generate_secret(), generate_secret()

    assert first.startswith("whsec_")
    assert len(secret_key(first)) == 32
    assert base64.b64encode(secret_key(first)).decode() == first[len("whsec_") :]
    assert first != second


def test_a_generated_secret_signs_and_verifies() -> None:
    secret = generate_secret()
    body = b'{"trigger": "nightly"}'

    headers = signature_headers(secret, "run-1", 1_700_000_000, body)

    verify(secret, headers, body, now=1_700_000_042)


def test_secret_key_decodes_the_specification_secret() -> None:
    key = secret_key(SPEC_SECRET)

    assert key == base64.b64decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")


@pytest.mark.parametrize(
    ("secret", "message"),
    [
        ("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "must start with 'whsec_'"),
        ("whsec_", "empty key"),
        ("whsec_not base64!", "not valid base64"),
        ("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaS", "not valid base64"),
    ],
)
def test_secret_key_refuses_malformed_secrets(secret: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        secret_key(secret)

    assert secret not in str(caught.value)
