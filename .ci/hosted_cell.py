"""Run the README's "Run on Colab / any hosted Jupyter" cell, then notebook 01, in one kernel.

Usage (from .ci/smoke-python, in a venv holding torch, ipykernel and nbclient; HOME is the
session's home): python .ci/hosted_cell.py REPO. The cell is read from REPO/README.md with its
`REPO = ...` line pointed at REPO (a local clone of HEAD instead of the hosting URL); everything
else runs as written. Fails on any cell error, or when the cell does not pick `tiny` without a GPU.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

SECTION = "## Run on Colab / any hosted Jupyter\n"


def readme_cell(repo: Path) -> str:
    readme = (repo / "README.md").read_text()
    assert SECTION in readme, f"README.md has no section {SECTION.strip()!r}"
    section = readme.split(SECTION, 1)[1].split("\n## ", 1)[0]
    assert "```python\n" in section, "README.md: the hosted-notebook section has no ```python cell"
    cell = section.split("```python\n", 1)[1].split("```", 1)[0]
    cell, n = re.subn(r"^REPO = .*$", f"REPO = {str(repo)!r}", cell, count=1, flags=re.M)
    assert n == 1, "README.md: the hosted-notebook cell has no `REPO = ...` line"
    return cell


def main(repo: Path) -> None:
    nb01 = nbformat.read(repo / "notebooks" / "01_data_and_tokenization.ipynb", as_version=4)
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(readme_cell(repo)), *nb01.cells])
    # A hosted notebook runs its own kernel whatever the file names; here, this venv's python3.
    client = NotebookClient(nb, kernel_name="python3", timeout=900,
                            resources={"metadata": {"path": str(Path.home())}})
    client.execute()
    printed = "".join(o.get("text", "") for o in nb.cells[0].outputs if o.output_type == "stream")
    last = printed.strip().splitlines()[-1] if printed.strip() else "(nothing)"
    print(f"  the cell printed: {last}")
    assert "PRESET = 'tiny'" in printed, "the cell should pick the tiny preset without a GPU"
    code = [c for c in nb.cells if c.cell_type == "code"]
    print(f"  {len(code)} code cells ran, {sum(len(c.outputs) for c in code)} outputs, no error")


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve())
