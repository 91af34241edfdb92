"""HTTP targets without a network: what is refused, how requests are classified, what is masked."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from gatehouse.models import Connection
from gatehouse.targets.http import (
    MAX_BODY_BYTES,
    MAX_PATH,
    MAX_QUERY,
    HttpCommand,
    HttpConfigError,
    HttpRefusedError,
    JsonPath,
    address_refusal,
    classify,
    parse_target,
)

BAD_INPUTS = json.loads((Path(__file__).parent / "data" / "http_bad_inputs.json").read_text())["cases"]
PLACEHOLDERS = {
    "LONG_PATH": "/" + "a" * MAX_PATH,
    "LONG_QUERY": "q" * MAX_QUERY,
    "LONG_BODY": "x" * (MAX_BODY_BYTES + 1),
}


def connection(**attributes: Any) -> Connection:
    attrs = {"base_url": "https://api.example.com/v2", **attributes}
    return Connection(
        name="svc",
        kind="http",
        host="api.example.com",
        port=443,
        database="",
        secret_id="s",
        attributes=attrs,
    )


def command(**fields: Any) -> HttpCommand:
    return HttpCommand.model_validate(fields)


def _fill(value: Any) -> Any:
    if isinstance(value, str):
        return PLACEHOLDERS.get(value, value)
    if isinstance(value, dict):
        return {k: _fill(v) for k, v in value.items()}
    return value


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c["why"] for c in BAD_INPUTS])
def test_bad_input_is_refused_with_its_code(case: dict[str, Any]) -> None:
    # Given a command from the corpus of hostile or malformed requests
    cmd = command(**_fill(case["command"]))
    # When it is classified (the first step of the decision path)
    with pytest.raises(HttpRefusedError) as refused:
        classify(cmd, connection(**case.get("attributes", {})))
    # Then it is a 400 with the stable code, and the message never echoes a control character
    assert refused.value.code == case["code"]
    assert refused.value.status == 400
    assert "\r" not in refused.value.message and "\n" not in refused.value.message


def test_the_corpus_covers_every_refusal_code() -> None:
    codes = {c["code"] for c in BAD_INPUTS}
    assert codes >= {
        "http_unknown_method",
        "http_bad_path",
        "http_foreign_host",
        "http_path_traversal",
        "http_header_injection",
        "http_bad_header",
        "http_credential_header",
        "http_bad_query",
        "http_body_too_large",
    }


CLASSES = [
    # method, path, path_classes, expected class
    ("GET", "/customers/42", [], "read"),
    ("HEAD", "/customers/42", [], "read"),
    ("OPTIONS", "/customers", [], "read"),
    ("get", "/customers/42", [], "read"),
    ("POST", "/refunds", [], "write"),
    ("PUT", "/customers/42", [], "write"),
    ("PATCH", "/customers/42", [], "write"),
    ("DELETE", "/customers/42", [], "write"),
    # a search endpoint that only reads, declared by the connection
    ("POST", "/search", [{"method": "POST", "path": "/search", "class": "read"}], "read"),
    # a GET that acts (a "trigger" endpoint), declared by the connection
    ("GET", "/jobs/7/run", [{"method": "GET", "path": "/jobs/*/run", "class": "write"}], "write"),
    ("GET", "/jobs/7", [{"method": "GET", "path": "/jobs/*/run", "class": "write"}], "read"),
    # `*` stays within a segment, `**` crosses them, `{name}` is one segment
    ("GET", "/admin/a/b", [{"method": "*", "path": "/admin/*", "class": "write"}], "read"),
    ("GET", "/admin/a/b", [{"method": "*", "path": "/admin/**", "class": "write"}], "write"),
    ("GET", "/customers/42", [{"method": "GET", "path": "/customers/{id}", "class": "write"}], "write"),
    # the method must match unless the rule says "*"
    ("DELETE", "/search", [{"method": "POST", "path": "/search", "class": "read"}], "write"),
    # the first matching rule wins
    (
        "POST",
        "/search/export",
        [
            {"method": "POST", "path": "/search/export", "class": "write"},
            {"method": "POST", "path": "/search/**", "class": "read"},
        ],
        "write",
    ),
]


@pytest.mark.parametrize(("method", "path", "rules", "expected"), CLASSES)
def test_classification_by_method_and_path(method: str, path: str, rules: list[Any], expected: str) -> None:
    classified = classify(command(method=method, path=path), connection(path_classes=rules))
    assert classified.cls == expected
    assert path in classified.reason


def test_reason_names_the_rule_that_decided() -> None:
    conn = connection(path_classes=[{"method": "GET", "path": "/customers/{id}", "class": "read"}])
    classified = classify(command(method="GET", path="/customers/42"), conn)
    assert classified.reason == "GET /customers/42 is a read: the connection maps GET /customers/{id} to read"


def test_canonical_text_is_one_line_with_query_headers_and_body() -> None:
    cmd = command(
        method="POST",
        path="/refunds",
        query={"dry": "no", "tag": ["a b", "c"]},
        headers={"X-Reason": "duplicate"},
        body={"customer_id": 42, "note": "line one\nline two"},
    )
    text = classify(cmd, connection()).text
    assert text == (
        'POST /refunds?dry=no&tag=a+b&tag=c headers={"X-Reason": "duplicate"} '
        'body={"customer_id":42,"note":"line one\\nline two"}'
    )
    assert "\n" not in text


def test_text_body_is_quoted_in_the_canonical_text() -> None:
    text = classify(command(method="PUT", path="/notes/1", body="hello\nworld"), connection()).text
    assert text == 'PUT /notes/1 body="hello\\nworld"'


def test_command_model_is_strict_and_documented() -> None:
    with pytest.raises(ValidationError):
        command(method="GET", path="/", url="http://evil.example")  # unknown field
    with pytest.raises(ValidationError):
        command(method="GET", path="/", headers={"X-Count": 1})  # a header value must be a string
    schema = HttpCommand.model_json_schema()
    assert schema["additionalProperties"] is False
    assert all(field.get("description") for field in schema["properties"].values())


ADDRESSES = [
    # address, local, allow_private, refused?
    ("169.254.169.254", True, True, "a cloud metadata address"),
    ("fd00:ec2::254", True, True, "a cloud metadata address"),
    ("::ffff:169.254.169.254", True, True, "a cloud metadata address"),
    ("64:ff9b::a9fe:a9fe", True, True, "a cloud metadata address"),  # NAT64 of 169.254.169.254
    ("2002:a9fe:a9fe::1", True, True, "a cloud metadata address"),  # 6to4 of 169.254.169.254
    ("169.254.1.1", True, True, "a link-local address"),
    ("fe80::1", True, True, "a link-local address"),
    ("fe80::1%eth0", True, True, "a link-local address"),
    ("127.0.0.1", False, True, "a loopback address (the connection is not local)"),
    ("127.8.9.10", False, True, "a loopback address (the connection is not local)"),
    ("::1", False, True, "a loopback address (the connection is not local)"),
    ("::ffff:127.0.0.1", False, True, "a loopback address (the connection is not local)"),
    ("127.0.0.1", True, True, None),
    ("::1", True, True, None),
    ("0.0.0.0", True, True, "an unspecified, multicast or reserved address"),
    ("::", True, True, "an unspecified, multicast or reserved address"),
    ("224.0.0.1", True, True, "an unspecified, multicast or reserved address"),
    ("10.1.2.3", False, True, None),
    ("172.16.0.9", False, True, None),
    ("192.168.1.1", False, True, None),
    ("fd12:3456::1", False, True, None),
    ("10.1.2.3", False, False, "a private address (the connection does not allow them)"),
    ("192.168.1.1", False, False, "a private address (the connection does not allow them)"),
    ("93.184.216.34", False, False, None),
    ("2606:4700::1111", False, False, None),
]


@pytest.mark.parametrize(("address", "local", "allow_private", "refused"), ADDRESSES)
def test_address_policy(address: str, local: bool, allow_private: bool, refused: str | None) -> None:
    assert address_refusal(address, local=local, allow_private=allow_private) == refused


BAD_CONFIGS = [
    {"base_url": "ftp://api.example.com"},
    {"base_url": "http://api.example.com"},  # clear text to a remote host
    {"base_url": "https://user:pw@api.example.com"},
    {"base_url": "https://api.example.com/?x=1"},
    {"base_url": "https://api.example.com/a/../b"},
    {"auth": "digest"},
    {"auth": "api_key"},
    {"auth": "sigv4", "aws_service": "execute-api"},
    {"local": "yes"},
    {"path_classes": [{"method": "GET", "path": "/x", "class": "admin"}]},
    {"path_classes": [{"method": "TRACE", "path": "/x", "class": "read"}]},
    {"path_classes": [{"method": "GET", "path": "x", "class": "read"}]},
    {"mask_paths": ["customers.email"]},
    {"mask_paths": ["$.customers[?(@.vip)]"]},
]


@pytest.mark.parametrize("attrs", BAD_CONFIGS, ids=[json.dumps(a) for a in BAD_CONFIGS])
def test_bad_connection_attributes_fail_closed(attrs: dict[str, Any]) -> None:
    with pytest.raises(HttpConfigError):
        classify(command(method="GET", path="/"), connection(**attrs))


def test_plain_http_is_allowed_for_a_local_connection() -> None:
    target = parse_target(connection(base_url="http://localhost:8080/api/", local=True))
    assert (target.scheme, target.host, target.port, target.prefix) == ("http", "localhost", 8080, "/api")
    assert target.netloc == "localhost:8080"


DOC = {
    "ssn": "123-45-6789",
    "customers": [
        {"id": 1, "email": "ann@example.com", "profile": {"email": "x@example.com", "card": "1"}},
        {"id": 2, "email": "bob@example.com"},
    ],
    "meta": {"owner": {"email": "ops@example.com"}},
}


@pytest.mark.parametrize(
    ("path", "where"),
    [
        ("$.ssn", [("ssn",)]),
        ("$.customers[*].email", [("customers", 0, "email"), ("customers", 1, "email")]),
        ("$.customers[1].email", [("customers", 1, "email")]),
        ("$['meta'][\"owner\"].email", [("meta", "owner", "email")]),
        (
            "$..email",
            [
                ("customers", 0, "email"),
                ("customers", 0, "profile", "email"),
                ("customers", 1, "email"),
                ("meta", "owner", "email"),
            ],
        ),
        (
            "$.customers[*].profile.*",
            [("customers", 0, "profile", "email"), ("customers", 0, "profile", "card")],
        ),
        ("$.nothing.here", []),
    ],
)
def test_json_path_redacts_exactly_what_it_selects(path: str, where: list[tuple[Any, ...]]) -> None:
    document = json.loads(json.dumps(DOC))
    redacted, count = JsonPath.parse(path).redact(document)
    assert count == len(where)
    expected = json.loads(json.dumps(DOC))
    for location in where:
        node = expected
        for step in location[:-1]:
            node = node[step]
        node[location[-1]] = "[REDACTED]"
    assert redacted == expected


def test_private_addresses_are_refused_unless_the_connection_opts_in() -> None:
    # A name that resolves into the VPC is the classic SSRF: reaching it is a registered decision.
    default = parse_target(connection())
    assert default.allow_private is False
    assert address_refusal("10.0.0.5", local=default.local, allow_private=default.allow_private)
    opted = parse_target(connection(allow_private=True))
    assert address_refusal("10.0.0.5", local=opted.local, allow_private=opted.allow_private) is None
    assert address_refusal("169.254.169.254", local=True, allow_private=True)  # never, whatever it says
