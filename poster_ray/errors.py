"""The one exception type users see: the CLI prints its message as a single line."""


class PosterRayError(Exception):
    """A problem with the user's input or environment, phrased as what to fix."""
