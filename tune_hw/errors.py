"""The one exception type the CLIs turn into a single clear line and a non-zero exit."""


class UserError(Exception):
    """A problem with the user's input that the user can fix; the message says how."""
