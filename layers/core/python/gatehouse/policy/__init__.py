"""Who may do what: Cedar policies, schema-validated at load, parsed once per process.

`PolicyEngine.default()` loads the packaged policies (`policies/*.cedar`) and schema
(`gatehouse.cedarschema`); `PolicyEngine.from_dir(path)` loads another directory.
"""

from __future__ import annotations

from gatehouse.policy.engine import PolicyEngine, PolicyInfo, default_schema_path

__all__ = ["PolicyEngine", "PolicyInfo", "default_schema_path"]
