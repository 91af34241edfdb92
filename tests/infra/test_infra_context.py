"""Context values: both spellings (cdk.json numbers, `-c` strings), refusals, the dependency layer."""

from __future__ import annotations

from pathlib import Path

import pytest
from aws_cdk import App, Stack
from aws_cdk import aws_logs as logs

from gatehouse import names
from infra import cdk_json_context
from infra.context import BundleDeps, ContextError, InfraContext
from infra.core_layer import CoreLayers, DepsLayerMissingError


def _context(**values: object) -> InfraContext:
    return InfraContext.from_node(App(context=dict(values)))


def test_defaults_come_from_names_and_cdk_json():
    context = InfraContext.from_node(App(context=cdk_json_context()))

    assert context.log_retention_days == names.DEFAULT_LOG_RETENTION_DAYS
    assert context.bundle_deps is BundleDeps.AUTO
    assert context.deps_layer_dir.parts[-2:] == ("build", "deps-layer")
    assert context.api_reserved_concurrency is None


def test_cli_strings_and_json_numbers_read_the_same():
    from_cli = _context(logRetentionDays="30", functionLogRetentionDays="14", bundleDeps="false")
    from_json = _context(logRetentionDays=30, functionLogRetentionDays=14, bundleDeps=False)

    assert from_cli == from_json
    assert from_cli.log_retention_days == 30
    assert from_cli.function_log_retention is logs.RetentionDays.TWO_WEEKS
    assert from_cli.bundle_deps is BundleDeps.NEVER


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("logRetentionDays", "0"),
        ("logRetentionDays", "-1"),
        ("logRetentionDays", "1.5"),
        ("logRetentionDays", "a year"),
        ("logRetentionDays", True),
        ("functionLogRetentionDays", "10"),
        ("bundleDeps", "maybe"),
        ("apiReservedConcurrency", "0"),
    ],
)
def test_malformed_values_stop_the_synth_naming_the_key(key: str, value: object):
    with pytest.raises(ContextError, match=key):
        _context(**{key: value})


def test_bundle_deps_true_refuses_to_synthesize_without_the_built_layer(tmp_path: Path):
    stack = Stack(App(), "Probe")
    context = InfraContext(bundle_deps=BundleDeps.REQUIRED, deps_layer_dir=tmp_path / "missing")

    with pytest.raises(DepsLayerMissingError, match="make layer"):
        CoreLayers(stack, "Layers", context=context)


def test_bundle_deps_auto_goes_without_the_layer_when_it_is_not_built(tmp_path: Path):
    stack = Stack(App(), "Probe")
    context = InfraContext(bundle_deps=BundleDeps.AUTO, deps_layer_dir=tmp_path / "missing")

    layers = CoreLayers(stack, "Layers", context=context)

    assert layers.deps is None
    assert layers.layers == [layers.core]
