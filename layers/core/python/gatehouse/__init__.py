"""Gatehouse: an access gateway for AI agents.

One decision path for every protocol: classify -> authorize -> execute -> mask -> record.
"""

from __future__ import annotations

__version__ = "0.1.0"
