"""A notebook's parameters as its parameters cell sets them, for the tests that check what notebooks run."""

import json


def notebook_parameters(name: str) -> dict:
    """A notebook's parameters as its parameters cell sets them (what papermill would override), the cell executed."""
    from b2lib.utils.paths import REPO_ROOT

    cells = json.loads((REPO_ROOT / "notebooks" / f"{name}.ipynb").read_text())["cells"]
    cell = next(c for c in cells if "parameters" in c.get("metadata", {}).get("tags", []))
    namespace: dict = {}
    exec("".join(cell["source"]), namespace)
    return {k: v for k, v in namespace.items() if not k.startswith("__") and k != "MAIN"}
