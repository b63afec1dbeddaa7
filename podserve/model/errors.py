"""The one error type model loading raises for bad user input (paths, files, preset names)."""


class ModelLoadError(ValueError):
    """A model spec could not be loaded; the message is one line naming the path and what was expected."""
