"""The runtime's user errors: each one line that names the bad value and the fix."""

from __future__ import annotations

from charlstm.errors import UserError


class ModelError(UserError):
    """The model folder is missing, unreadable, or does not match its manifest (model.json)."""


class InputError(UserError):
    """A generation input is out of range: a prompt character, a sampling option, a device name."""


class DeviceError(UserError):
    """The requested execution provider (CUDA) could not be started."""
