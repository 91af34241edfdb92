"""Every function of the stack is built by one helper (infra.functions.GatehouseFunction): the same
runtime, tracing, JSON logs into its own log group with a retention, a timeout, and its own role."""

from __future__ import annotations

from typing import Any

from infra.core_layer import lambda_python
from tests.infra.conftest import Synthesized


def _functions(synthesized: Synthesized) -> dict[str, dict[str, Any]]:
    found = {
        key: value["Properties"]
        for key, value in synthesized.resources_of_type("AWS::Lambda::Function").items()
        # CDK's own custom-resource handlers (none today) would not be ours to shape.
        if str(value["Properties"].get("FunctionName", "")).startswith("gatehouse-")
    }
    assert len(found) >= 3, sorted(found)
    return found


def test_every_function_logs_json_at_its_level_into_its_own_log_group(synthesized: Synthesized):
    log_groups = synthesized.resources_of_type("AWS::Logs::LogGroup")
    for key, props in _functions(synthesized).items():
        logging = props["LoggingConfig"]
        assert logging["LogFormat"] == "JSON", key
        assert logging["ApplicationLogLevel"] == "INFO", key
        assert logging["SystemLogLevel"] == "INFO", key
        group = logging["LogGroup"]["Ref"]
        assert group in log_groups, key
        assert log_groups[group]["Properties"]["RetentionInDays"] == 90, key


def test_every_function_shares_the_runtime_tracing_and_a_bounded_timeout(synthesized: Synthesized):
    functions = _functions(synthesized)
    assert {props["Runtime"] for props in functions.values()} == {"python3.12"}
    assert {len(props["Layers"]) for props in functions.values()} == {2}
    for key, props in functions.items():
        assert props["TracingConfig"] == {"Mode": "Active"}, key
        assert 0 < props["Timeout"] <= 60, key
        assert props["Environment"]["Variables"]["POWERTOOLS_SERVICE_NAME"] == props["FunctionName"], key


def test_every_function_has_a_role_of_its_own_without_managed_policies(synthesized: Synthesized):
    functions = _functions(synthesized)
    roles = [props["Role"]["Fn::GetAtt"][0] for props in functions.values()]
    assert len(set(roles)) == len(roles)
    iam_roles = synthesized.resources_of_type("AWS::IAM::Role")
    for role in roles:
        assert not iam_roles[role]["Properties"].get("ManagedPolicyArns"), role


def test_the_gatehouse_layer_ships_bytecode_for_the_runtime_compiled_from_what_ships(
    synthesized: Synthesized,
):
    [layer] = [
        value
        for value in synthesized.resources_of_type("AWS::Lambda::LayerVersion").values()
        if value["Properties"]["Description"].startswith("Gatehouse: the gatehouse package")
    ]
    # The asset's S3 key is its hash; CDK stages it in the cloud assembly as asset.<hash>.
    asset_hash = layer["Properties"]["Content"]["S3Key"].removesuffix(".zip")
    asset = synthesized.template_path.parent / f"asset.{asset_hash}"
    package = asset / "python" / "gatehouse"
    assert (package / "service.py").is_file()
    # Never the development interpreter's caches from the working tree.
    assert not list(asset.rglob("*.cpython-311.pyc"))
    if lambda_python() is None:
        [warning] = [
            m
            for m in synthesized.app.synth().get_stack_by_name(synthesized.stack.stack_name).messages
            if "coreLayerWithoutBytecode" in str(m.entry.data)
        ]
        assert warning.level.value == "warning"
        return
    compiled = package / "__pycache__" / "service.cpython-312.pyc"
    # PEP 552 flags: bit 0 hash-based, bit 1 checked against the source.
    assert int.from_bytes(compiled.read_bytes()[4:8], "little") == 0b11
