"""A fresh machine gets what the suite needs: every package fastvideo and its tests import is declared
(core or the dev extra that scripts/setup.sh installs), and constraints.txt pins each declared package."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Imported on purpose only where present, each with an install hint (or a fallback), never by the suite.
OPTIONAL = {
    "flash_attn": "the flash extra, CUDA only",
    "bitsandbytes": "--optimizer adamw8bit, CUDA only",
    "wandb": "--report_to wandb (the wandb extra); its test stands a fake in",
    "matplotlib": "prettier loss curves; PIL draws them otherwise",
}


def requirement_name(spec: str) -> str:
    return re.split(r"[<>=!~;\[ ]", spec, maxsplit=1)[0].lower().replace("_", "-")


def declared() -> set[str]:
    """Core and dev requirements, as the installed fastvideo's metadata (from pyproject.toml) lists them."""
    requires = importlib.metadata.requires("fastvideo") or []
    return {requirement_name(r) for r in requires if "extra ==" not in r or 'extra == "dev"' in r}


def third_party_imports() -> dict[str, str]:
    """Top-level module -> a file importing it, over fastvideo/, tests/ and scripts/."""
    local = {p.stem for p in (REPO / "tests").glob("*.py")} | {
        p.stem for p in (REPO / "scripts").glob("*.py")
    }
    found = {}
    for folder in ("fastvideo", "tests", "scripts"):
        for path in (REPO / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top != "fastvideo" and top not in local:
                        found.setdefault(top, str(path.relative_to(REPO)))
    return found


def test_every_imported_package_is_declared_and_installed():
    providers = importlib.metadata.packages_distributions()
    wanted = declared()
    problems = []
    for module, where in sorted(third_party_imports().items()):
        if module in OPTIONAL:
            continue
        dists = {d.lower().replace("_", "-") for d in providers.get(module, [])}
        if not dists:
            problems.append(
                f"{module} (imported by {where}) is not installed: declare it so setup.sh installs it"
            )
        elif not dists & wanted:
            problems.append(
                f"{module} (imported by {where}) comes from {sorted(dists)}, not declared in pyproject.toml"
            )
    assert not problems, "\n".join(problems)


def test_constraints_pin_every_declared_package_and_setup_uses_them():
    lines = [line for line in (REPO / "constraints.txt").read_text().splitlines() if line and line[0] != "#"]
    pinned = {requirement_name(line): line for line in lines}
    assert all("==" in line for line in lines)
    missing = sorted(declared() - set(pinned) - {"torch"})
    assert not missing, f"constraints.txt does not pin {missing}: run bash scripts/update_constraints.sh"
    assert "torch" not in pinned  # setup.sh picks torch (the user's CUDA build, or the CPU wheel)
    setup = (REPO / "scripts" / "setup.sh").read_text()
    assert "CONSTRAINTS=${FASTVIDEO_CONSTRAINTS:-constraints.txt}" in setup and '-c "$CONSTRAINTS"' in setup
