"""Errors caused by what a user asked for (as opposed to bugs).

Each carries a short machine code (sent as `/error i:req s:code s:message` by the bridge) and a message that
says what was wrong and what to do. The CLI prints the message as one line and exits 2.
"""


class UserError(Exception):
    """Bad input: wrong arguments, missing or unreadable files, unavailable models or devices."""

    code = "bad_input"

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        if code is not None:
            self.code = code


class ModelNotFound(UserError):
    code = "no_model"


class BadAudio(UserError):
    code = "bad_audio"


class BadMidi(UserError):
    code = "bad_midi"


class Cancelled(Exception):
    """A generation was cancelled by its owner (not an error to report loudly)."""


class EngineLost(UserError):
    """The engine went away mid-request (a remote engine's connection dropped, its process died)."""

    code = "engine_lost"
