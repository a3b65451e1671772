"""Exception types. Every error names the input it is about."""


class T2IRouteError(Exception):
    """Base class of t2iroute's errors."""


class TableError(T2IRouteError, ValueError):
    """A quality table is missing, unreadable or violates the schema."""


class ArtifactError(T2IRouteError):
    """A router artifact is missing, damaged or does not match this installation."""


class ConfigError(T2IRouteError, ValueError):
    """A configuration value is invalid."""


class GenerationError(T2IRouteError):
    """Every backend tried for a prompt failed (the message lists each failure)."""
