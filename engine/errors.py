"""Errors the engine raises for inputs it cannot use.

Each message is one line that names the file (and the field or tensor) and says what was
expected, so a command-line front end can print it as it is and exit with code 2.
"""


class ModelLoadError(Exception):
    """A model file or directory cannot be loaded as asked."""


class UnsupportedArchitectureError(ModelLoadError):
    """The file declares an architecture the engine does not implement."""


class SettingError(Exception):
    """An environment setting of the engine or its kernels has a value they cannot use."""
