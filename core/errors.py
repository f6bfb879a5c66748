"""The one exception type for a user's mistake.

Every stage raises UserError (or ConfigError / CheckpointError, which derive from it) for bad input;
core.cli.run turns it into one `error: <what is wrong>; <how to fix it>` line and exit status 2.
It lives in a module of its own so that core.config and core.cli can both use it without a cycle."""


class UserError(ValueError):
    """Bad input from the user: printed as one line by core.cli.run, exit 2, no traceback."""


class CheckpointError(UserError):
    """A checkpoint that cannot be used; the message names the file, the problem and the fix."""
