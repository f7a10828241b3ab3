"""The one base class of every foreseeable DINOCell error: the CLI turns it into a one-line message and exit 1."""


class DinocellError(Exception):
    """A problem the user can fix (bad file, bad setting, busy run); the message names the file or key."""
