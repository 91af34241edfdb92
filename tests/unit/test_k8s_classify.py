"""Kubernetes requests: every verb and resource lands in its class; bad input is refused unsent."""

from __future__ import annotations

import json
import shlex
from typing import Any

import pydantic
import pytest

from gatehouse.exceptions import SecretUnavailableError
from gatehouse.local.k8s_standin import generate_certificates
from gatehouse.masking import Masker, load_profile
from gatehouse.models import Connection
from gatehouse.targets.kubernetes import (
    MAX_BODY_BYTES,
    KubernetesCommand,
    KubernetesConfigError,
    KubernetesRefusedError,
    classify,
    execute,
)

# A documentation address (RFC 5737): nothing answers there, so a test that reached the network
# would hang or fail, not pass.
CONNECTION = Connection(
    name="demo-k8s",
    kind="kubernetes",
    host="192.0.2.1",
    port=6443,
    database="",
    secret_id="gatehouse/demo-k8s",
    attributes={"api_server": "https://192.0.2.1:6443", "ca_pem": "-----BEGIN CERTIFICATE-----\n"},
)
MASKER = Masker(load_profile("default"), b"k8s-unit-test-key" * 2)

CLASSES: list[tuple[dict[str, Any], str]] = [
    ({"verb": "get", "resource": "pods", "name": "web-1"}, "read"),
    ({"verb": "list", "resource": "pods"}, "read"),
    ({"verb": "list", "resource": "pods", "body": {"labelSelector": "app=web"}}, "read"),
    ({"verb": "watch", "resource": "deployments", "namespace": "prod"}, "read"),
    ({"verb": "logs", "resource": "pods", "name": "web-1", "body": {"tailLines": 10}}, "read"),
    ({"verb": "get", "resource": "pods", "name": "web-1", "subresource": "log"}, "read"),
    ({"verb": "get", "resource": "deployments", "name": "web", "subresource": "scale"}, "read"),
    ({"verb": "get", "resource": "nodes", "name": "node-1"}, "read"),
    ({"verb": "list", "resource": "namespaces"}, "read"),
    ({"verb": "get", "resource": "configmaps", "name": "kube-root-ca.crt"}, "read"),
    ({"verb": "create", "resource": "configmaps", "body": {"metadata": {"name": "x"}}}, "write"),
    ({"verb": "update", "resource": "deployments", "name": "web", "body": {"spec": {}}}, "write"),
    ({"verb": "patch", "resource": "deployments", "name": "web", "body": {"spec": {"replicas": 3}}}, "write"),
    (
        {"verb": "patch", "resource": "deployments", "name": "web", "subresource": "scale", "body": {}},
        "write",
    ),
    ({"verb": "patch", "resource": "pods", "name": "web-1", "subresource": "status", "body": {}}, "write"),
    ({"verb": "delete", "resource": "pods", "name": "web-1"}, "write"),
    ({"verb": "delete", "resource": "pods", "name": "web-1", "body": {"gracePeriodSeconds": 0}}, "write"),
    ({"verb": "scale", "resource": "deployments", "name": "web", "body": {"replicas": 0}}, "write"),
    ({"verb": "create", "resource": "clusterrolebindings", "body": {"metadata": {"name": "x"}}}, "write"),
    ({"verb": "exec", "resource": "pods", "name": "web-1", "body": {"command": ["ls"]}}, "exec"),
    (
        {
            "verb": "exec",
            "resource": "pods",
            "name": "web-1",
            "subresource": "exec",
            "body": {"command": ["cat", "/etc/hostname"], "container": "web"},
        },
        "exec",
    ),
    ({"verb": "attach", "resource": "pods", "name": "web-1"}, "exec"),
    ({"verb": "port-forward", "resource": "pods", "name": "web-1"}, "exec"),
    # Anything on Secrets is its own class, whatever the verb.
    ({"verb": "get", "resource": "secrets", "name": "db-credentials"}, "secrets"),
    ({"verb": "list", "resource": "secrets"}, "secrets"),
    ({"verb": "watch", "resource": "secrets", "namespace": "kube-system"}, "secrets"),
    ({"verb": "delete", "resource": "secrets", "name": "db-credentials"}, "secrets"),
    ({"verb": "create", "resource": "secrets", "body": {"metadata": {"name": "s"}, "data": {}}}, "secrets"),
    ({"verb": "patch", "resource": "secrets", "name": "s", "body": {"stringData": {"k": "v"}}}, "secrets"),
    # Fail closed: a resource or subresource the gateway does not know is never a read.
    ({"verb": "get", "resource": "widgets", "name": "w"}, "unknown"),
    ({"verb": "list", "resource": "certificatesigningrequests"}, "unknown"),
    ({"verb": "get", "resource": "pods", "name": "web-1", "subresource": "proxy"}, "unknown"),
    ({"verb": "get", "resource": "services", "name": "web", "subresource": "proxy"}, "unknown"),
    (
        {"verb": "create", "resource": "pods", "name": "web-1", "subresource": "eviction", "body": {}},
        "unknown",
    ),
    (
        {"verb": "create", "resource": "serviceaccounts", "name": "d", "subresource": "token", "body": {}},
        "unknown",
    ),
]


@pytest.mark.parametrize(
    ("fields", "expected"), CLASSES, ids=lambda v: json.dumps(v) if isinstance(v, dict) else v
)
def test_each_request_lands_in_its_class(fields: dict[str, Any], expected: str) -> None:
    got = classify(KubernetesCommand(**fields), CONNECTION)
    assert got.cls == expected, got.reason
    assert got.reason and "\n" not in got.text


# (fields, the refusal's stable code). Each must be refused by classify, before anything runs.
BAD_INPUTS: list[tuple[dict[str, Any], str]] = [
    ({"verb": "proxy", "resource": "pods", "name": "web-1"}, "k8s_unknown_verb"),
    ({"verb": "escalate", "resource": "roles", "name": "r"}, "k8s_unknown_verb"),
    ({"verb": "GET", "resource": "pods", "name": "web-1"}, "k8s_unknown_verb"),
    ({"verb": "deletecollection", "resource": "pods"}, "k8s_unknown_verb"),
    ({"verb": "", "resource": "pods"}, "k8s_unknown_verb"),
    # Path injection through every part of the path.
    ({"verb": "get", "resource": "pods", "name": "../secrets/db-credentials"}, "k8s_bad_name"),
    ({"verb": "get", "resource": "pods", "name": "web-1/exec"}, "k8s_bad_name"),
    ({"verb": "get", "resource": "pods", "name": "web-1%2F..%2Fsecrets"}, "k8s_bad_name"),
    ({"verb": "get", "resource": "pods", "name": "web-1?watch=1"}, "k8s_bad_name"),
    ({"verb": "get", "resource": "pods", "name": "web..1"}, "k8s_bad_name"),
    ({"verb": "get", "resource": "pods", "name": ".."}, "k8s_bad_name"),
    ({"verb": "get", "resource": "pods", "name": "Web-1"}, "k8s_bad_name"),
    ({"verb": "get", "resource": "pods", "name": "web-1\r\nX-Injected: 1"}, "k8s_bad_name"),
    ({"verb": "get", "resource": "pods", "name": ""}, "k8s_bad_name"),
    ({"verb": "get", "resource": "pods", "name": "a" * 254}, "k8s_bad_name"),
    ({"verb": "list", "resource": "pods", "namespace": "default/secrets"}, "k8s_bad_namespace"),
    ({"verb": "list", "resource": "pods", "namespace": "../../apis"}, "k8s_bad_namespace"),
    ({"verb": "list", "resource": "pods", "namespace": "kube.system"}, "k8s_bad_namespace"),
    ({"verb": "list", "resource": "pods", "namespace": "x" * 64}, "k8s_bad_namespace"),
    ({"verb": "list", "resource": "pods", "namespace": "default\n"}, "k8s_bad_namespace"),
    ({"verb": "list", "resource": "pods/exec"}, "k8s_bad_resource"),
    ({"verb": "list", "resource": "../secrets"}, "k8s_bad_resource"),
    ({"verb": "list", "resource": "Pods"}, "k8s_bad_resource"),
    ({"verb": "list", "resource": "deployments.apps"}, "k8s_bad_resource"),
    ({"verb": "get", "resource": "pods", "name": "web-1", "subresource": "../exec"}, "k8s_bad_subresource"),
    # A streaming subresource reached by another verb is how a websocket exec starts.
    ({"verb": "get", "resource": "pods", "name": "web-1", "subresource": "exec"}, "k8s_bad_subresource"),
    (
        {"verb": "create", "resource": "pods", "name": "web-1", "subresource": "attach", "body": {}},
        "k8s_bad_subresource",
    ),
    (
        {"verb": "get", "resource": "pods", "name": "web-1", "subresource": "portforward"},
        "k8s_bad_subresource",
    ),
    ({"verb": "exec", "resource": "pods", "name": "web-1", "subresource": "attach"}, "k8s_bad_subresource"),
    ({"verb": "logs", "resource": "deployments", "name": "web"}, "k8s_bad_subresource"),
    (
        {
            "verb": "scale",
            "resource": "deployments",
            "name": "web",
            "subresource": "status",
            "body": {"replicas": 1},
        },
        "k8s_bad_subresource",
    ),
    ({"verb": "list", "resource": "deployments", "subresource": "scale"}, "k8s_bad_subresource"),
    # Names where they belong, and only there.
    ({"verb": "get", "resource": "pods"}, "k8s_name_required"),
    ({"verb": "delete", "resource": "pods"}, "k8s_name_required"),
    ({"verb": "logs", "resource": "pods"}, "k8s_name_required"),
    ({"verb": "create", "resource": "configmaps", "body": {"data": {}}}, "k8s_name_required"),
    ({"verb": "list", "resource": "pods", "name": "web-1"}, "k8s_name_not_allowed"),
    ({"verb": "watch", "resource": "pods", "name": "web-1"}, "k8s_name_not_allowed"),
    ({"verb": "list", "resource": "nodes", "namespace": "default"}, "k8s_namespace_not_allowed"),
    # Bodies.
    ({"verb": "create", "resource": "configmaps", "name": "x"}, "k8s_body_required"),
    ({"verb": "patch", "resource": "deployments", "name": "web"}, "k8s_body_required"),
    ({"verb": "scale", "resource": "deployments", "name": "web"}, "k8s_body_required"),
    ({"verb": "get", "resource": "pods", "name": "web-1", "body": {"x": 1}}, "k8s_body_not_allowed"),
    (
        {"verb": "attach", "resource": "pods", "name": "web-1", "body": {"command": ["sh"]}},
        "k8s_body_not_allowed",
    ),
    # exec takes an argv, and nothing else.
    ({"verb": "exec", "resource": "pods", "name": "web-1"}, "k8s_body_required"),
    ({"verb": "exec", "resource": "pods", "body": {"command": ["ls"]}}, "k8s_name_required"),
    ({"verb": "exec", "resource": "pods", "name": "web-1", "body": {"command": "ls -l"}}, "k8s_bad_body"),
    ({"verb": "exec", "resource": "pods", "name": "web-1", "body": {"command": []}}, "k8s_bad_body"),
    ({"verb": "exec", "resource": "pods", "name": "web-1", "body": {"command": [""]}}, "k8s_bad_body"),
    ({"verb": "exec", "resource": "pods", "name": "web-1", "body": {"command": ["ls", 1]}}, "k8s_bad_body"),
    ({"verb": "exec", "resource": "pods", "name": "web-1", "body": {"container": "web"}}, "k8s_bad_body"),
    (
        {"verb": "exec", "resource": "pods", "name": "web-1", "body": {"command": ["cat"], "stdin": True}},
        "k8s_bad_body",
    ),
    (
        {"verb": "exec", "resource": "pods", "name": "web-1", "body": {"command": ["echo", "a\nrm -rf /"]}},
        "k8s_bad_body",
    ),
    (
        {
            "verb": "exec",
            "resource": "pods",
            "name": "web-1",
            "body": {"command": ["ls"], "container": "../x"},
        },
        "k8s_bad_body",
    ),
    (
        {"verb": "exec", "resource": "pods", "name": "web-1", "body": {"command": ["echo"] + ["x"] * 64}},
        "k8s_bad_body",
    ),
    (
        {"verb": "exec", "resource": "pods", "name": "web-1", "body": {"command": ["echo", "x" * 8192]}},
        "k8s_bad_body",
    ),
    ({"verb": "scale", "resource": "deployments", "name": "web", "body": {"replicas": "3"}}, "k8s_bad_body"),
    ({"verb": "scale", "resource": "deployments", "name": "web", "body": {"replicas": -1}}, "k8s_bad_body"),
    ({"verb": "scale", "resource": "deployments", "name": "web", "body": {"replicas": True}}, "k8s_bad_body"),
    (
        {"verb": "scale", "resource": "deployments", "name": "web", "body": {"replicas": 2, "x": 1}},
        "k8s_bad_body",
    ),
    ({"verb": "list", "resource": "pods", "body": {"watch": "1"}}, "k8s_bad_body"),
    ({"verb": "list", "resource": "pods", "body": {"labelSelector": "app=web\r\nX: y"}}, "k8s_bad_body"),
    ({"verb": "logs", "resource": "pods", "name": "web-1", "body": {"tailLines": "10"}}, "k8s_bad_body"),
    ({"verb": "logs", "resource": "pods", "name": "web-1", "body": {"previous": 1}}, "k8s_bad_body"),
    ({"verb": "logs", "resource": "pods", "name": "web-1", "body": {"container": "../x"}}, "k8s_bad_body"),
    (
        {"verb": "create", "resource": "configmaps", "name": "a", "body": {"metadata": {"name": "b"}}},
        "k8s_bad_body",
    ),
    (
        {
            "verb": "create",
            "resource": "configmaps",
            "body": {"metadata": {"name": "a", "namespace": "kube-system"}},
        },
        "k8s_bad_body",
    ),
    ({"verb": "update", "resource": "configmaps", "name": "a", "body": {"metadata": "a"}}, "k8s_bad_body"),
    ({"verb": "create", "resource": "configmaps", "body": {"metadata": {"name": "../a"}}}, "k8s_bad_name"),
    (
        {
            "verb": "create",
            "resource": "configmaps",
            "body": {"metadata": {"name": "big"}, "data": {"k": "x" * MAX_BODY_BYTES}},
        },
        "k8s_body_too_large",
    ),
]


@pytest.mark.parametrize(
    ("fields", "code"), BAD_INPUTS, ids=lambda v: json.dumps(v)[:80] if isinstance(v, dict) else v
)
def test_bad_input_is_refused_with_a_stable_code(fields: dict[str, Any], code: str) -> None:
    command = KubernetesCommand(**fields)
    with pytest.raises(KubernetesRefusedError) as refused:
        classify(command, CONNECTION)
    assert refused.value.code == code
    assert refused.value.status == 400
    # And execute refuses it the same way, before it looks at the connection or the network.
    with pytest.raises(KubernetesRefusedError) as again:
        execute(command, CONNECTION, {"token": "t"}, timeout_s=1, max_bytes=1000, masker=MASKER)
    assert again.value.code == code


def test_the_request_model_is_strict_and_documented() -> None:
    with pytest.raises(pydantic.ValidationError):
        KubernetesCommand.model_validate({"verb": "get", "resource": "pods", "name": "web-1", "path": "/api"})
    with pytest.raises(pydantic.ValidationError):
        KubernetesCommand.model_validate({"verb": "get", "resource": ["pods"]})
    schema = KubernetesCommand.model_json_schema()
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) == {"verb", "resource", "namespace", "name", "body", "subresource"}
    assert all(p.get("description") for p in schema["properties"].values())
    assert "port-forward" in schema["properties"]["verb"]["enum"]


def test_the_text_is_one_canonical_line() -> None:
    a = classify(
        KubernetesCommand(
            verb="patch", resource="deployments", name="web", body={"spec": {"replicas": 3}, "a": 1}
        ),
        CONNECTION,
    )
    b = classify(
        KubernetesCommand.model_validate(
            {
                "body": {"a": 1, "spec": {"replicas": 3}},
                "name": "web",
                "resource": "deployments",
                "verb": "patch",
            }
        ),
        CONNECTION,
    )
    assert a.text == b.text == 'patch deployments/web -n default --body={"a":1,"spec":{"replicas":3}}'
    logs = classify(
        KubernetesCommand(verb="get", resource="pods", name="web-1", subresource="log"), CONNECTION
    )
    assert logs.text == "logs pods/web-1 -n default"
    nodes = classify(KubernetesCommand(verb="get", resource="nodes", name="node-1"), CONNECTION)
    assert nodes.text == "get nodes/node-1"


def test_an_exec_reads_as_kubectl_writes_it_and_quotes_its_argv() -> None:
    argv = ["echo", "x; rm -rf /", "$(id)", "it's"]
    command = KubernetesCommand(
        verb="exec", resource="pods", name="web-1", body={"command": argv, "container": "web"}
    )
    classified = classify(command, CONNECTION)
    assert classified.cls == "exec"
    assert classified.text == "exec pods/web-1 -n default -c web -- echo 'x; rm -rf /' '$(id)' 'it'\"'\"'s'"
    # What the approver reads splits back into exactly the argv that runs.
    assert shlex.split(classified.text.split(" -- ", 1)[1]) == argv
    plain = classify(
        KubernetesCommand(verb="exec", resource="pods", name="web-1", body={"command": ["ls", "-l"]}),
        CONNECTION,
    )
    assert plain.text == "exec pods/web-1 -n default -- ls -l"


def test_a_secrets_values_never_reach_the_text() -> None:
    command = KubernetesCommand(
        verb="create",
        resource="secrets",
        body={
            "metadata": {
                "name": "api",
                "annotations": {
                    "kubectl.kubernetes.io/last-applied-configuration": '{"data":{"k":"aHVudGVyMg=="}}'
                },
            },
            "data": {"k": "aHVudGVyMg=="},
            "stringData": {"password": "hunter2"},
        },
    )
    got = classify(command, CONNECTION)
    assert got.cls == "secrets"
    assert "hunter2" not in got.text and "aHVudGVyMg" not in got.text
    assert '"password":"[REDACTED]"' in got.text and '"k":"[REDACTED]"' in got.text


def test_a_connection_may_name_its_own_resources() -> None:
    connection = Connection(
        **{
            **CONNECTION.__dict__,
            "attributes": {
                **CONNECTION.attributes,
                "resources": {"widgets": {"group": "example.com", "version": "v1", "namespaced": True}},
            },
        }
    )
    command = KubernetesCommand(verb="get", resource="widgets", name="w")
    assert classify(command, CONNECTION).cls == "unknown"
    assert classify(command, connection).cls == "read"
    broken = Connection(**{**CONNECTION.__dict__, "attributes": {"resources": {"widgets": {"group": "/x"}}}})
    with pytest.raises(KubernetesConfigError):
        classify(command, broken)


@pytest.mark.parametrize("verb", ["attach", "port-forward"])
def test_interactive_streams_are_classified_but_never_executed(verb: str) -> None:
    command = KubernetesCommand(verb=verb, resource="pods", name="web-1")
    assert classify(command, CONNECTION).cls == "exec"
    with pytest.raises(KubernetesRefusedError) as refused:
        execute(command, CONNECTION, {"token": "t"}, timeout_s=1, max_bytes=1000, masker=MASKER)
    assert refused.value.code == "k8s_interactive_not_supported"
    assert refused.value.status == 501
    assert "interactive" in refused.value.message and "exec" in refused.value.message


def test_unknown_resources_are_not_executed() -> None:
    command = KubernetesCommand(verb="get", resource="pods", name="web-1", subresource="proxy")
    with pytest.raises(KubernetesRefusedError) as refused:
        execute(command, CONNECTION, {"token": "t"}, timeout_s=1, max_bytes=1000, masker=MASKER)
    assert refused.value.code == "k8s_unknown_resource"


@pytest.mark.parametrize(
    "attributes",
    [
        {},
        {"api_server": "http://192.0.2.1:6443", "ca_pem": CONNECTION.attributes["ca_pem"]},
        {"api_server": "https://user:pw@192.0.2.1:6443", "ca_pem": CONNECTION.attributes["ca_pem"]},
        {"api_server": "https://192.0.2.1:6443"},
        {"api_server": "https://192.0.2.1:6443", "ca_pem": "-----BEGIN CERTIFICATE-----\nnot base64\n"},
    ],
)
def test_a_connection_without_https_and_a_pinned_ca_is_refused(attributes: dict[str, str]) -> None:
    connection = Connection(**{**CONNECTION.__dict__, "attributes": attributes})
    command = KubernetesCommand(verb="list", resource="pods")
    with pytest.raises(KubernetesConfigError):
        execute(command, connection, {"token": "t"}, timeout_s=1, max_bytes=1000, masker=MASKER)


@pytest.mark.parametrize(
    "credential", [{}, {"token": ""}, {"token": "abc\r\nX-Evil: 1"}, {"token": "a b"}, {"token": 7}]
)
def test_an_unusable_token_is_refused_without_quoting_it(credential: dict[str, Any]) -> None:
    # A valid pinned CA so that only the token is at fault; the address answers nothing, so a
    # request that went out would fail as unreachable, not as a bad credential.
    ca_pem = generate_certificates()[0].decode()
    connection = Connection(
        **{**CONNECTION.__dict__, "attributes": {**CONNECTION.attributes, "ca_pem": ca_pem}}
    )
    with pytest.raises(SecretUnavailableError) as refused:
        execute(
            KubernetesCommand(verb="list", resource="pods"),
            connection,
            credential,
            timeout_s=1,
            max_bytes=1000,
            masker=MASKER,
        )
    assert "X-Evil" not in str(refused.value) and "abc" not in str(refused.value)
