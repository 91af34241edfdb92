"""The Lambda layers: the `gatehouse` package itself, and its third-party dependencies.

Nothing here runs Docker. The dependencies (some compiled: pglast, cedarpy, pydantic-core) are
installed ahead of time by `make layer` as manylinux x86_64 wheels for CPython 3.12 into
`build/deps-layer/python`; this module only packages that directory. RUNTIME and ARCHITECTURE
below must match the `--python-version` and `--platform` of that pip command.
"""

from __future__ import annotations

from aws_cdk import Annotations
from aws_cdk import aws_lambda as lambda_
from constructs import Construct

from infra.context import REPO_ROOT, BundleDeps, InfraContext

RUNTIME = lambda_.Runtime.PYTHON_3_12
ARCHITECTURE = lambda_.Architecture.X86_64

CORE_LAYER_DIR = REPO_ROOT / "layers" / "core"

# Build leftovers that must not reach the asset (and must not change its hash).
ASSET_EXCLUDES = ["**/__pycache__", "**/*.pyc", "**/*.egg-info", "**/.mypy_cache", "**/.pytest_cache"]


class DepsLayerMissingError(RuntimeError):
    """bundleDeps=true and the dependency layer has not been built."""


class CoreLayers(Construct):
    """`self.layers`: what every function attaches, the dependencies first."""

    def __init__(self, scope: Construct, construct_id: str, *, context: InfraContext) -> None:
        super().__init__(scope, construct_id)
        # Lambda extracts layers in order, a later one overwriting an earlier one's files. Under the
        # flag @aws-cdk/aws-lambda:recognizeLayerVersion, CDK sorts a function's layers by construct
        # path, so these ids ("Dependencies" < "Gatehouse") put gatehouse last, whatever the order
        # of `self.layers`.
        self.core = lambda_.LayerVersion(
            self,
            "Gatehouse",
            code=lambda_.Code.from_asset(str(CORE_LAYER_DIR), exclude=ASSET_EXCLUDES),
            compatible_runtimes=[RUNTIME],
            compatible_architectures=[ARCHITECTURE],
            description="Gatehouse: the gatehouse package (layers/core/python/gatehouse).",
        )
        self.deps = self._deps_layer(context)
        self.layers: list[lambda_.ILayerVersion] = [layer for layer in (self.deps, self.core) if layer]

    def _deps_layer(self, context: InfraContext) -> lambda_.LayerVersion | None:
        deps_dir = context.deps_layer_dir
        built = (deps_dir / "python").is_dir()
        if context.bundle_deps is BundleDeps.NEVER:
            return None
        if not built:
            message = (
                f"{deps_dir}/python does not exist: the functions are synthesized without their "
                "third-party dependencies. Run `make layer` before deploying."
            )
            if context.bundle_deps is BundleDeps.REQUIRED:
                raise DepsLayerMissingError(message)
            Annotations.of(self).add_warning_v2("gatehouse:depsLayerMissing", message)
            return None
        return lambda_.LayerVersion(
            self,
            "Dependencies",
            code=lambda_.Code.from_asset(str(deps_dir), exclude=["**/__pycache__"]),
            compatible_runtimes=[RUNTIME],
            compatible_architectures=[ARCHITECTURE],
            description="Gatehouse: third-party dependencies (make layer).",
        )
