"""Exceptions of the masking package."""

from __future__ import annotations

from gatehouse.exceptions import GatehouseError


class MaskingConfigError(GatehouseError):
    """A masking profile or key is unknown or invalid: nothing may be returned unmasked."""

    code = "masking_config"
    status = 500
