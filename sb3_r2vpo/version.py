"""Single source of the package version (read by setup.cfg and exposed as ``sb3_r2vpo.__version__``)."""

__version__ = "0.1.0"
