"""``locoedit ui``: a local web app to localize, edit and evaluate in the browser (the optional ``ui`` extra).

:mod:`locoedit.web.jobs` and :mod:`locoedit.web.workbench` hold what the app does and need no web framework;
:mod:`locoedit.web.app` builds the Gradio page on them, and is the only module that imports Gradio.
"""
