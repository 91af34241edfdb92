"""The Lambda layers: the `gatehouse` package itself, and its third-party dependencies.

Nothing here runs Docker. The dependencies (some compiled: pglast, cedarpy, pydantic-core) are
installed ahead of time by `make layer` as manylinux aarch64 wheels for CPython 3.12 into
`build/deps-layer/python`; this module only packages that directory. RUNTIME and ARCHITECTURE
below must match the `--python-version` and `--platform` of that pip command.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path

import jsii
from aws_cdk import Annotations, Aspects, CfnResource, IAspect, Stack
from aws_cdk import aws_lambda as lambda_
from constructs import Construct, IConstruct

from gatehouse.policy.engine import PolicyEngine
from infra.context import REPO_ROOT, BundleDeps, ContextError, InfraContext

RUNTIME = lambda_.Runtime.PYTHON_3_12
# Graviton: Lambda bills arm64 about 20% less per GB-second, and every dependency, compiled ones
# included, has a manylinux aarch64 wheel for CPython 3.12 (`make layer` proves it: --only-binary).
ARCHITECTURE = lambda_.Architecture.ARM_64

CORE_LAYER_DIR = REPO_ROOT / "layers" / "core"

# Build leftovers that must not reach the asset (and must not change its hash).
ASSET_EXCLUDES = ["**/__pycache__", "**/*.pyc", "**/*.egg-info", "**/.mypy_cache", "**/.pytest_cache"]


# What the staged copy of the package leaves out (the working tree's caches and build leftovers).
_IGNORED = ("__pycache__", "*.pyc", "*.egg-info", ".mypy_cache", ".pytest_cache")


def lambda_python(env: os._Environ[str] | dict[str, str] | None = None) -> str | None:
    """A CPython 3.12, the runtime's version (a .pyc is read only by its own minor version):
    $LAMBDA_PYTHON, python3.12 on the PATH, or pyenv's; None if there is none (the Makefile's rule)."""
    env = os.environ if env is None else env
    home = Path(env.get("HOME") or Path.home())
    candidates = [env.get("LAMBDA_PYTHON") or "", shutil.which("python3.12") or ""]
    candidates += [str(p) for p in sorted(home.glob(".pyenv/versions/3.12*/bin/python3.12"))]
    for candidate in filter(None, candidates):
        probe = subprocess.run(
            [candidate, "-c", "import sys; sys.exit(sys.version_info[:2] != (3, 12))"],
            capture_output=True,
            check=False,
            timeout=30,
        )
        if probe.returncode == 0:
            return candidate
    return None


def compile_for_lambda(python: str, layer_root: Path) -> None:
    """Hash-based bytecode (PEP 552, checked: the asset's zip keeps no file times), named as Lambda
    sees the files (/opt/python/...), with a fixed hash seed: the same source, the same bytes."""
    subprocess.run(
        [
            python,
            "-m",
            "compileall",
            "-q",
            "-j",
            "0",
            "--invalidation-mode",
            "checked-hash",
            "-d",
            "/opt/python",
            "python",
        ],
        cwd=layer_root,
        env={**os.environ, "PYTHONHASHSEED": "0"},
        check=True,
        capture_output=True,
        timeout=300,
    )


class DepsLayerMissingError(RuntimeError):
    """bundleDeps=true and the dependency layer has not been built."""


class UnknownApproverGroupError(ContextError):
    """A packaged policy asks for approval by a group that is not in the context's approverGroups."""


def check_approver_groups(groups: Iterable[str], engine: PolicyEngine | None = None) -> None:
    """Refuse policies (the packaged ones by default) whose @approval names a group not in `groups`.

    Nobody can be in a group the deployment does not have, so a typo in @approval("...") would
    leave every request that policy decides pending until it expires: stop the synth instead.
    """
    known = tuple(groups)
    engine = engine or PolicyEngine.default()
    unknown = [
        f'{policy.source}: policy {policy.policy_id} asks for @approval by "{group}"'
        for policy in engine.policies
        if policy.approval is not None
        for group in policy.approval.groups
        if group not in known
    ]
    if unknown:
        raise UnknownApproverGroupError(
            "; ".join(unknown)
            + f", not one of approverGroups {list(known)}: nobody could approve those requests. "
            "Fix the policy, or add the group to approverGroups (cdk.json, or -c approverGroups=a,b)."
        )


@jsii.implements(IAspect)
class FunctionArchitecture:
    """Every AWS::Lambda::Function of the stack on ARCHITECTURE, CDK's own custom-resource handlers
    included (a CustomResourceProvider, such as the VPC's default security group restriction, is a
    bare CfnResource that names no architecture, so Lambda would run it on x86_64)."""

    def visit(self, node: IConstruct) -> None:
        if isinstance(node, CfnResource) and node.cfn_resource_type == "AWS::Lambda::Function":
            node.add_property_override("Architectures", [ARCHITECTURE.name])


class CoreLayers(Construct):
    """`self.layers`: what every function attaches, the dependencies first."""

    def __init__(self, scope: Construct, construct_id: str, *, context: InfraContext) -> None:
        super().__init__(scope, construct_id)
        # This layer ships the packaged policies (the proxy's image installs the same package).
        check_approver_groups(context.approver_groups)
        # The layers' compiled wheels are for ARCHITECTURE: so is every function of the stack.
        Aspects.of(Stack.of(self)).add(FunctionArchitecture())
        # Lambda extracts layers in order, a later one overwriting an earlier one's files. Under the
        # flag @aws-cdk/aws-lambda:recognizeLayerVersion, CDK sorts a function's layers by construct
        # path, so these ids ("Dependencies" < "Gatehouse") put gatehouse last, whatever the order
        # of `self.layers`.
        self.core = lambda_.LayerVersion(
            self,
            "Gatehouse",
            code=self._core_code(context),
            compatible_runtimes=[RUNTIME],
            compatible_architectures=[ARCHITECTURE],
            description="Gatehouse: the gatehouse package (layers/core/python/gatehouse).",
        )
        self.deps = self._deps_layer(context)
        self.layers: list[lambda_.ILayerVersion] = [layer for layer in (self.deps, self.core) if layer]

    def _core_code(self, context: InfraContext) -> lambda_.Code:
        """The gatehouse package; for a deploy (bundleDeps=true), with its Python 3.12 bytecode.

        Lambda's /opt is read-only: a layer without bytecode is compiled on every cold start. The
        package is staged and compiled at synth, so the bytecode always matches the source that
        ships (the working tree's __pycache__ is the development interpreter's, and never shipped).
        """
        if context.bundle_deps is not BundleDeps.REQUIRED:
            return lambda_.Code.from_asset(str(CORE_LAYER_DIR), exclude=ASSET_EXCLUDES)
        python = lambda_python()
        staged = Path(tempfile.mkdtemp(prefix="gatehouse-core-layer-"))
        # The asset is copied into cdk.out when the app synthesizes, after this returns.
        atexit.register(shutil.rmtree, staged, ignore_errors=True)
        shutil.copytree(
            CORE_LAYER_DIR / "python", staged / "python", ignore=shutil.ignore_patterns(*_IGNORED)
        )
        if python is None:
            Annotations.of(self).add_warning_v2(
                "gatehouse:coreLayerWithoutBytecode",
                "no CPython 3.12 found (set LAMBDA_PYTHON): the gatehouse layer ships no bytecode, "
                "so each cold start compiles it",
            )
        else:
            compile_for_lambda(python, staged)
        return lambda_.Code.from_asset(str(staged))

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
