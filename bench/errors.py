"""The one exception type for mistakes a user can make (bad config, missing data, unknown name).

The CLI catches it, prints its message as one line and exits with code 2. It is defined in
`methods.errors` (methods import neither bench nor protocols) and re-exported here.
"""
from dmlbench.methods.errors import UserError, unknown_name

__all__ = ["UserError", "unknown_name"]
