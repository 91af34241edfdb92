"""Masking: what must not leave, does not leave.

Every query result is masked before it is returned to an agent and before it is recorded;
statement texts and error messages are masked before they reach the audit log.

    masker = Masker(load_profile(connection.masking_profile), hash_key)
    out = masker.mask_rows(columns, rows)      # out.rows, out.masked
    safe = masker.mask_text(statement)
"""

from __future__ import annotations

from gatehouse.masking.engine import MaskedRows, Masker
from gatehouse.masking.exceptions import MaskingConfigError
from gatehouse.masking.profiles import (
    DETECTOR_NAMES,
    PROFILE_NAMES,
    ColumnRule,
    MaskingProfile,
    Strategy,
    load_profile,
)

__all__ = [
    "DETECTOR_NAMES",
    "PROFILE_NAMES",
    "ColumnRule",
    "MaskedRows",
    "Masker",
    "MaskingConfigError",
    "MaskingProfile",
    "Strategy",
    "load_profile",
]
