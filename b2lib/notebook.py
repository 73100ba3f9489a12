"""What every notebook does first, in one call: offline hub, plot style, and the smoke size under the test suite; and
the cleaner for a notebook's committed outputs.

Import this module (not ``b2lib.experiments.experiment``) before anything that loads huggingface_hub, so the offline
setting is in place when the hub library reads it at import.

The notebooks are committed with the outputs of their full runs, and those outputs carry what only the machine that ran
them knows: absolute paths (``/work/<checkout>/results/...``, a clean clone under ``/tmp/...``, the interpreter's
``site-packages``), ipywidgets progress bars that a static viewer shows stuck at 0 %, and stderr lines of probes that
failed harmlessly (the CUDA probe of ``torch.profiler`` on a CPU machine). :func:`clean_notebook` rewrites those
outputs, and only those: cell sources, execution counts and figures are left as they are. From the shell::

    python -m b2lib.notebook clean notebooks/*.ipynb
"""

from __future__ import annotations

import copy
import json
import os
import re
import sys
from pathlib import Path

__all__ = [
    "MACHINE_PATH",
    "clean_file",
    "clean_notebook",
    "clean_text",
    "parameters",
    "setup",
    "smoke_params",
]  # and SMOKE


def smoke_params() -> dict:
    """The toy size every study notebook runs at under the test suite and CI (``B2_SMOKE=1``), as notebook parameters:
    the smoke preset's sizes (:data:`b2lib.experiments.presets.SMOKE`, the one place they are set), one seed, one
    worker. A notebook takes the entries whose names it defines as parameters (``setup(globals())``); the chain's length
    and interval start go through ``overrides``, so they win over a notebook's own trainer settings."""
    from b2lib.experiments.presets import SMOKE as toy  # postponed: presets loads torch; see setup()

    return dict(
        stages=toy["num_stages"],
        images_per_stage=toy["images_per_stage"],
        branches=toy["num_branches"],
        eval_images=toy["eval_images"],
        eval_n_per_prompt=toy["eval_n_per_prompt"],
        eval_max_prompts=toy["eval_max_prompts"],
        seeds=[0],
        workers=1,
        overrides={"num_steps": toy["num_steps"], "split_start": toy["split_start"]},
    )


def __getattr__(name: str):
    # ``SMOKE``, read when asked for: importing this module must not import torch or the hub libraries (``setup``
    # sets the offline switches before they load)
    if name == "SMOKE":
        return smoke_params()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def setup(params: dict | None = None, **smoke) -> bool:
    """Offline hub (a hub name fails at once instead of retrying for ~48 s; the embedded scale needs no hub), the
    figures' style, and the run size. Returns whether this is a smoke run (:func:`b2lib.utils.paths.is_smoke`).

    ``params`` is the notebook's namespace (``globals()``): under a smoke run every :func:`smoke_params` entry it
    defines is replaced by the smoke value (``overrides`` included: the smoke chain), and every keyword in ``smoke`` (a
    notebook's own toy sizes) is set. The paper preset still loads from a local hub cache; set ``HF_HUB_OFFLINE=0``
    to download.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    # postponed until the offline switches above are set: these load torch and the hub libraries, which read them
    from b2lib.reporting.plots import set_style
    from b2lib.utils.paths import is_smoke

    set_style()
    smoke_run = is_smoke()
    if params is not None and smoke_run:
        for name, value in {**smoke_params(), **smoke}.items():
            if name in params or name in smoke:
                params[name] = copy.deepcopy(value)
    return smoke_run


# ---------------------------------------------------------------------------------------------------------------------
# Cleaning committed outputs

#: The repository this module belongs to: its absolute path in an output becomes a repo-relative one.
REPO_ROOT = Path(__file__).resolve().parents[1]
#: Top-level folders of the repository: an absolute path that reaches one of them (another clone, e.g. ``/tmp/clean``)
#: is cut back to the repo-relative path from there.
_REPO_DIRS = ("results", "b2lib", "notebooks", "docs", "tests", "benchmarks", "scripts")
# a path starts at a "/" not glued to a word, a dot, "~" or a placeholder's ">" (so "results/tmp/x" and URLs are not
# machine paths); its components are file-name characters
_START = r"(?<![\w.~<>-])"
_PART = r"[\w.+@-]+"
#: An absolute path on a machine's scratch, checkout or home folders: what a committed output must not hold.
MACHINE_PATH = re.compile(_START + r"/(?:tmp|work|root|home)/")
_SITE_PACKAGES = re.compile(_START + rf"/(?:{_PART}/)*?(?:site|dist)-packages/")
_INTO_REPO = re.compile(_START + rf"/(?:tmp|work|root|home)/(?:{_PART}/)*?(?=(?:{'|'.join(_REPO_DIRS)})(?![\w.-]))")
_HOME = re.compile(_START + rf"/(?:root|home/{_PART})(?=/|(?![\w.-]))")
_SCRATCH = re.compile(_START + r"/(tmp|work)(?=/)")
#: stderr lines that say nothing about the run: the CUDA probe of torch.profiler (kineto) on a machine without a GPU,
#: and kineto's own start/stop markers.
SPURIOUS_STDERR = (
    re.compile(r"gpuGetDeviceCount failed"),
    re.compile(r"^(?:USDT|STAGE):\d{4}-\d\d-\d\d .*(?:ActivityProfiler|SyncActivityProfilerHandler)"),
)
_WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
#: a tqdm bar as text ("Loading weights:   0%|    | 0/52 [00:00<?, ?it/s]", "runs: 0it [00:00, ?it/s]"): the plain-text
#: stand-in of a widget bar, what remains of one whose widget view was stripped
_TQDM_BAR = re.compile(r"^[^\n]*(?:\d+%\|[^|\n]*\| *\d+/\d+|\d+it) \[[^\]\n]*\]\s*$")


def parameters(path: str | Path) -> dict:
    """The parameters a notebook's parameters cell sets (the cell executed, as papermill would run it before its
    overrides): what a script that runs a notebook's work outside it reads, so the two build the same runs."""
    cells = json.loads(Path(path).read_text())["cells"]
    cell = next((c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])), None)
    if cell is None:
        raise ValueError(f"{path} has no cell tagged 'parameters'.")
    namespace: dict = {}
    exec("".join(cell["source"]), namespace)
    return {k: v for k, v in namespace.items() if not k.startswith("__") and k != "MAIN"}


def clean_text(text: str, root: str | Path | None = None) -> str:
    """``text`` with every machine path made portable: this checkout's root (``root``, default :data:`REPO_ROOT`)
    removed so its paths read repo-relative, ``.../site-packages/`` shortened to ``<site-packages>/``, a path of
    another clone cut back to the repository folder it reaches, and any other ``/tmp``, ``/work``, ``/root`` or
    ``/home/<user>`` prefix replaced by ``<tmp>``, ``<work>`` or ``~``."""
    base = str(Path(root).resolve() if root is not None else REPO_ROOT).rstrip("/")
    text = re.sub(_START + re.escape(base) + r"/", "", text)
    text = re.sub(_START + re.escape(base) + r"(?![\w.-])", ".", text)
    text = _SITE_PACKAGES.sub("<site-packages>/", text)
    text = _INTO_REPO.sub("", text)
    text = _HOME.sub("~", text)
    return _SCRATCH.sub(lambda m: f"<{m.group(1)}>", text)


def _lines(value) -> list[str]:
    return value if isinstance(value, list) else str(value).splitlines(keepends=True)


def _clean_value(value, root):
    """A notebook text field (a string or a list of lines) cleaned, in the same shape."""
    cleaned = clean_text("".join(_lines(value)), root)
    return cleaned.splitlines(keepends=True) if isinstance(value, list) else cleaned


def _clean_output(out: dict, root) -> dict | None:
    """One output cleaned, or None when it is to be dropped: a widget view (a progress bar a static viewer shows at
    0 %), or a stderr stream of nothing but spurious lines. Only text is touched, never image data."""
    data = out.get("data", {})
    if _WIDGET_VIEW in data:
        return None
    if out.get("output_type") == "display_data" and set(data) == {"text/plain"}:
        if _TQDM_BAR.match("".join(_lines(data["text/plain"]))):
            return None
    out = dict(out)
    if out.get("output_type") == "stream":
        lines = _lines(out.get("text", ""))
        if out.get("name") == "stderr":
            lines = [line for line in lines if not any(p.search(line) for p in SPURIOUS_STDERR)]
            if not lines:
                return None
        out["text"] = _clean_value(lines, root)
    if data:
        out["data"] = {k: _clean_value(v, root) if k.startswith("text/") else v for k, v in data.items()}
    if out.get("output_type") == "error":
        out["traceback"] = [clean_text(line, root) for line in out.get("traceback", [])]
        out["evalue"] = clean_text(out.get("evalue", ""), root)
    return out


def clean_notebook(nb: dict, root: str | Path | None = None) -> dict:
    """A copy of the notebook ``nb`` (nbformat 4 as a dict) with portable outputs: see the module docstring and
    :func:`clean_text`. Also drops the widget state of the removed bars from the notebook's metadata and makes
    papermill's recorded input and output paths portable. Cell sources are never changed."""
    nb = copy.deepcopy(nb)
    for cell in nb.get("cells", []):
        if "outputs" in cell:
            cell["outputs"] = [o for o in (_clean_output(out, root) for out in cell["outputs"]) if o is not None]
    meta = nb.get("metadata", {})
    meta.pop("widgets", None)  # the state of the progress bars removed above
    pm = meta.get("papermill", {})
    for key in ("input_path", "output_path"):
        if isinstance(pm.get(key), str):
            pm[key] = clean_text(pm[key], root)
    return nb


def clean_file(path: str | Path, root: str | Path | None = None) -> bool:
    """Clean one ``.ipynb`` in place (:func:`clean_notebook`); returns whether it changed. Written as papermill and
    Jupyter write notebooks (one-space indent, non-ASCII kept), so an unchanged notebook is not rewritten."""
    path = Path(path)
    nb = json.loads(path.read_text(encoding="utf-8"))
    cleaned = clean_notebook(nb, root)
    if cleaned == nb:
        return False
    path.write_text(json.dumps(cleaned, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return True


def main(argv: list[str] | None = None) -> int:
    """``python -m b2lib.notebook clean FILE.ipynb ...``: clean each notebook's outputs in place."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m b2lib.notebook", description="Tools for the committed notebooks.")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("clean", help="make committed outputs portable (paths, progress bars, spurious stderr)")
    c.add_argument("notebooks", nargs="+", type=Path)
    c.add_argument("--root", default=None, help="the checkout whose absolute path becomes relative (default: this one)")
    a = p.parse_args(argv)
    for path in a.notebooks:
        print(f"{path}: {'cleaned' if clean_file(path, a.root) else 'already clean'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
