"""Executed notebooks store no progress bars; the Trainer's table, figures and prints stay."""

from __future__ import annotations

import nbformat

from reclor_lab.course.stored_outputs import WIDGET, DropProgressBars, is_progress_bar


def widget(text: str) -> dict:
    return nbformat.v4.new_output("display_data", data={WIDGET: {"model_id": "x"}, "text/plain": text})


def test_drops_bars_and_keeps_everything_else():
    keep = [
        nbformat.v4.new_output("stream", name="stdout", text="epoch 1: eval loss 1.2\n"),
        nbformat.v4.new_output("display_data", data={"text/html": "<table>…</table>", "text/plain": "<IPython>"}),
        nbformat.v4.new_output("display_data", data={"image/png": "iVBOR", "text/plain": "<Figure size 700x380>"}),
        widget("a slider"),  # a widget that is not a bar
    ]
    bars = [widget("eval:   0%|          | 0/8 [00:00<?, ?it/s]"),
            widget("Loading weights:  35%|███▌      | 7/20 [00:00<00:00, 60.1it/s]")]
    cell = nbformat.v4.new_code_cell("fit(run)", outputs=[bars[0], keep[0], keep[1], bars[1], keep[2], keep[3]])
    nb = nbformat.v4.new_notebook(cells=[cell, nbformat.v4.new_markdown_cell("text")])
    out, _ = DropProgressBars().preprocess(nb, {})
    assert out.cells[0].outputs == keep
    assert all(is_progress_bar(b) for b in bars) and not any(is_progress_bar(k) for k in keep)
