"""Domain exceptions, split into retryable and permanent failures."""

from __future__ import annotations


class JourneyError(Exception):
    """Root of every error this project raises on purpose."""


class DefinitionError(JourneyError):
    """Raised when a definition file cannot be read or does not validate."""


class CheckFailed(JourneyError):
    """Raised when a journey has problems that stop it from going live."""

    def __init__(self, problems: list) -> None:
        self.problems = problems
        super().__init__(f"{len(problems)} problem(s) found")


class SettingsError(JourneyError):
    """Raised when an environment variable has an invalid value for a setting."""


class ContactImportError(JourneyError):
    """Raised when a contacts file cannot be imported at all."""


class NotFound(JourneyError):
    """Raised when a named journey, email or segment does not exist."""


class RetryableError(JourneyError):
    """Raised when an attempt may succeed later; the broker retries it."""


class SmtpTemporaryError(RetryableError):
    """Raised when the SMTP server replied 4xx or the connection was lost
    before the message data was sent."""


class PermanentError(JourneyError):
    """Raised when retrying cannot help; the contact is marked failed."""


class BrokenMessage(PermanentError):
    """Raised when a queue message does not validate against its model."""
