"""The README's deploy walkthrough reads stack outputs and context keys: each one must exist."""

from __future__ import annotations

import re

from infra.context import REPO_ROOT
from tests.infra.conftest import Synthesized

README = (REPO_ROOT / "README.md").read_text(encoding="utf-8")


def test_every_output_the_walkthrough_reads_is_an_output_of_the_stack(synthesized: Synthesized):
    # `out NAME` in the walkthrough reads cdk-outputs.json; `for sg in A B C` loops over output names.
    read = set(re.findall(r"\$\(out (\w+)\)", README))
    for names in re.findall(r"for sg in ([\w ]+); do", README):
        read |= set(names.split())
    outputs = set(synthesized.template.to_json()["Outputs"])
    assert len(read) >= 8
    assert read <= outputs, sorted(read - outputs)


def test_every_context_key_the_readme_documents_is_read_by_the_app():
    section = README[
        README.index("### Configuration (cdk.json context") : README.index("### Deploy walkthrough")
    ]
    rows = [line.split("|")[1] for line in section.splitlines() if line.startswith("| `")]
    documented = {key for row in rows for key in re.findall(r"`(\w+)`", row)}
    app = (REPO_ROOT / "infra" / "context.py").read_text(encoding="utf-8")
    assert len(documented) >= 15
    missing = sorted(key for key in documented if f'"{key}"' not in app)
    assert not missing, missing
