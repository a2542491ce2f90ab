"""Reading a policy document (YAML or JSON) from a file into the core's `Policy`."""

from __future__ import annotations

from pathlib import Path

import yaml

from meter.core.errors import PolicyError
from meter.core.policy import Policy, load_policy


def read_policy(path: str | Path) -> Policy:
    """Load and validate the policy at `path`; each problem is a `PolicyError` with a field path."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise PolicyError(
            "", f"cannot read policy file {p}: {exc.strerror or exc} (--policy / METER_POLICY)"
        ) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise PolicyError("", f"{p} is not valid YAML{where}: {problem}") from exc
    return load_policy(data)


def bundled_policy_path() -> Path:
    """The example policy shipped with the package: one org with eight apps, like the 2022 case."""
    return Path(__file__).resolve().parents[1] / "examples" / "case-2022.yaml"
