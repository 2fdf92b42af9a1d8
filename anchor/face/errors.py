"""The face package's one error type, apart so that every face module can raise it without a cycle."""


class AvatarError(ValueError):
    """An avatar image or video could not be used (unreadable, no face, several, too small or turned)."""
