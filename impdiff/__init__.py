"""impdiff: find where an inference engine stops agreeing with llama.cpp."""

__version__ = "0.1.0"
