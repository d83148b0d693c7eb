"""How a comparison is run: class splits, the conventional protocol, MLRC."""

PROTOCOLS = ("conventional", "mlrc")


def list_protocols() -> list[str]:
    return list(PROTOCOLS)
