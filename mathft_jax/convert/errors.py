"""The one error type of the converters: the message names the file, field or tensor."""


class ConversionError(ValueError):
    """An HF directory or checkpoint that cannot be converted."""
