"""Errors that end a command with exit code 2: the message tells the operator what to fix."""


class StartupError(RuntimeError):
    """The node cannot start (RPC unreachable, wrong chain, ...)."""


def is_rpc_error(e: BaseException) -> bool:
    """Errors of the chain's RPC (transport or a JSON-RPC answer), as opposed to the node's own bugs."""
    from aiohttp import ClientError
    from web3.exceptions import Web3Exception

    return isinstance(e, ConnectionError | TimeoutError | ClientError | Web3Exception | OSError)
