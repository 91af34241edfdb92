"""The Gatehouse CDK app: `create_app()` builds it the same way for `app.py` and for the tests."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from aws_cdk import App, Validations
from cdk_nag import AwsSolutionsChecks

from gatehouse import names
from infra.context import REPO_ROOT
from infra.stack import GatehouseStack

CDK_JSON = REPO_ROOT / "cdk.json"


def cdk_json_context() -> dict[str, Any]:
    """cdk.json's context (feature flags and defaults). The CDK CLI passes it to the app itself;
    `python app.py` has no CLI, so the app reads it as its defaults and the CLI's values win."""
    return dict(json.loads(CDK_JSON.read_text())["context"])


def create_app(context: Mapping[str, Any] | None = None, outdir: str | None = None) -> App:
    """The app with its one stack, checked by cdk-nag (AwsSolutions) at synth.

    `context` overrides cdk.json's values (tests use it); `cdk -c` overrides both.
    """
    app = App(context={**cdk_json_context(), **(context or {})}, outdir=outdir)
    GatehouseStack(
        app,
        names.STACK_NAME,
        description="Gatehouse: an access gateway for AI agents (API, session log, audit).",
    )
    # A finding that is not acknowledged (with its reason) interrupts the synth.
    Validations.of(app).add_plugins(AwsSolutionsChecks(app, verbose=True))
    return app
