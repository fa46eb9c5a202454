"""Errors that end a command with exit code 2: the message tells the operator what to fix."""


class StartupError(RuntimeError):
    """The node cannot start (RPC unreachable, wrong chain, ...)."""
