"""forwardguard: immunize images against AI editing, and keep them immunized in future models."""

from forwardguard.errors import ForwardguardError

__all__ = ["ForwardguardError"]
__version__ = "0.1.0"
