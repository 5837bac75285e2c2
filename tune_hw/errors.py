"""The one exception type the CLIs turn into a single clear line and a non-zero exit,
and the argument parser whose mistakes read the same."""

import argparse
from typing import NoReturn


class UserError(Exception):
    """A problem with the user's input that the user can fix; the message says how."""


class StudyError(UserError):
    """A study file breaks a rule; the message names file, key and fix."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose mistakes are one `error: ...` line and exit 2, like a UserError's."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")
