"""`python app.py` (or `cdk synth`) writes the Gatehouse CloudFormation template to cdk.out/."""

from __future__ import annotations

import os

from infra import create_app
from infra.context import REPO_ROOT

if __name__ == "__main__":
    # The CDK CLI names its own output directory (cdk.json "output") through CDK_OUTDIR.
    outdir = None if os.environ.get("CDK_OUTDIR") else str(REPO_ROOT / "cdk.out")
    create_app(outdir=outdir).synth()
