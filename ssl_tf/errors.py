"""The one exception type users see as a one-line message instead of a traceback."""


class SSLTFError(ValueError):
    """A mistake in the user's flags, files or data.

    The message names the flag or file, what was wrong and what is accepted.
    ``ssl-tf`` prints it as ``ssl-tf: error: <message>`` and exits with status 2.
    """


def check(cond: bool, flag: str, value, accepted: str) -> None:
    """Raise the one-line ``--flag=value: accepted`` error unless ``cond``."""
    if not cond:
        raise SSLTFError(f"--{flag}={value}: {accepted}")
