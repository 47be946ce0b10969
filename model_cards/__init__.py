"""Model card templates (Jinja2 Markdown) for trajfm checkpoints, shipped as package data."""

from importlib.resources import files
from pathlib import Path

#: Folder of the templates, wherever the package is installed.
TEMPLATES_DIR = Path(str(files(__name__)))
