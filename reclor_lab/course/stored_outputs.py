"""What an executed reference notebook keeps: no progress bars.

A progress bar in Jupyter is a widget. Executed without a browser (``jupyter nbconvert
--execute``, nbval's reference run), the notebook stores only the text it showed when it first
appeared ("epoch 1/3:   0%|   | 0/125"), which reads as if nothing had run. The bars' final
states are in the lines the loop prints anyway, so the stored copy drops them; a student running
the notebook in JupyterLab sees them live. ``notebooks/jupyter_nbconvert_config.py`` adds
:class:`DropProgressBars` after execution; ``make install`` copies it into the virtual
environment, where every ``jupyter nbconvert`` run of that environment reads it.
"""

from __future__ import annotations

import re

from nbconvert.preprocessors import Preprocessor

WIDGET = "application/vnd.jupyter.widget-view+json"
#: tqdm's text: "desc:  37%|███▋      | 3/8 [00:01<00:02, 2.1it/s]".
BAR = re.compile(r"\d+%\|.*\| *\d+/\d*")


def is_progress_bar(output: dict) -> bool:
    """A displayed widget whose text is a tqdm bar (the Trainer's HTML table is not one).

    >>> bar = "eval:   0%|          | 0/8 [00:00<?, ?it/s]"
    >>> is_progress_bar({"output_type": "display_data", "data": {WIDGET: {}, "text/plain": bar}})
    True
    >>> is_progress_bar({"output_type": "display_data", "data": {"text/plain": "<Figure size 640x480>"}})
    False
    """
    data = output.get("data", {})
    text = data.get("text/plain", "")
    text = "".join(text) if isinstance(text, list) else text
    return output.get("output_type") == "display_data" and WIDGET in data and bool(BAR.search(text))


class DropProgressBars(Preprocessor):
    """Remove progress-bar widgets from every cell's outputs."""

    def preprocess_cell(self, cell, resources, index):
        if cell.get("cell_type") == "code":
            cell.outputs = [o for o in cell.outputs if not is_progress_bar(o)]
        return cell, resources
