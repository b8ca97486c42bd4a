"""The one error type of the converters: the message names the file, field or tensor."""
from mathft_jax.core.errors import DataError



class ConversionError(DataError):
    """An HF directory or checkpoint that cannot be converted (a one-line error, exit 1, from
    the command line)."""
