"""The one exception type every layer raises for a mistake the user can fix; the bottom of the import graph.

The library raises it; the command line (charlstm/cli) prints it as one line with its exit code, and the HTTP
server as a JSON error with status 400. Nothing here prints.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix (a bad value, a missing file). The message names the value and the fix.

    `param` names the argument at fault in the library's own terms (`temperature`, `model_dir`), so that each
    front end can say it its own way (`--temperature` on the command line, `"param": "temperature"` over HTTP).
    Anything else that escapes is a bug and keeps its traceback.
    """

    exit_code = 2

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param
