# nbconvert's settings for this kit; `make install` copies this file into the virtual
# environment (.venv/etc/jupyter/), where every `jupyter nbconvert` of that environment reads it.
# After executing a notebook, drop its progress-bar widgets: a run without a browser stores them
# as they first appeared, at "0%" (see reclor_lab/course/stored_outputs.py).
c = get_config()  # noqa: F821 (provided by traitlets when the file is loaded)
c.NotebookExporter.preprocessors = ["reclor_lab.course.stored_outputs.DropProgressBars"]
