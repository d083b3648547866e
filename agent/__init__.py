"""netcheck agent: stand-in listeners and probes for one HDM component role."""

__version__ = "0.1.0"
