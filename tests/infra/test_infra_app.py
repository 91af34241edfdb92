"""`python app.py` is the whole deliverable: it must synthesize with no AWS account and no Docker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from gatehouse import names
from infra.context import REPO_ROOT


def test_python_app_py_writes_the_template_without_aws_or_docker(tmp_path: Path):
    env = {key: value for key, value in os.environ.items() if not key.startswith(("AWS_", "CDK_", "DOCKER"))}
    env |= {
        "CDK_OUTDIR": str(tmp_path),
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "CDK_DOCKER": "/nonexistent/docker",
        "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20",
    }

    result = subprocess.run(
        [sys.executable, "app.py"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    stack = manifest["artifacts"][names.STACK_NAME]
    assert stack["environment"] == "aws://unknown-account/unknown-region"
    template = json.loads((tmp_path / f"{names.STACK_NAME}.template.json").read_text())
    assert "ApiUrl" in template["Outputs"]
