"""A notebook's parameters as its parameters cell sets them, for the tests that check what notebooks run."""


def notebook_parameters(name: str) -> dict:
    """A notebook's parameters as its parameters cell sets them (what papermill would override), the cell executed."""
    from b2lib.notebook import parameters
    from b2lib.utils.paths import REPO_ROOT

    return parameters(REPO_ROOT / "notebooks" / f"{name}.ipynb")
