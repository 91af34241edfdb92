"""Secrets Manager -> gatehouse.rotation: one step of a connection secret's rotation. Thin: build
once, parse the event, run the step; an error fails the invocation and Secrets Manager retries."""

from __future__ import annotations

import os
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext

from gatehouse import names
from gatehouse.rotation import Rotation, RotationRequest, RotationSettings, build_rotation

logger = Logger(service=names.ROTATION_FUNCTION)

_rotation: Rotation | None = None


def _get_rotation() -> Rotation:
    # Built on the first invocation, then reused by the warm container.
    global _rotation
    if _rotation is None:
        _rotation = build_rotation(RotationSettings.from_env(os.environ))
    return _rotation


# The event holds no secret value (a secret's id, a version id, a step), but nothing else needs it.
@logger.inject_lambda_context(clear_state=True, log_event=False)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> None:
    request = RotationRequest.from_event(event)
    logger.append_keys(step=request.step, secret_id=request.secret_id, version_id=request.token)
    _get_rotation().run(request)
