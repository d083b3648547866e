"""netcheck: a network connectivity validator for HDM (Hybrid Data Mobility).

The installed package holds two subpackages: ``netcheck.agent`` (standard library only; it
also runs as one file on the hosts and guests it probes from) and ``netcheck.controller``.
In the repository they live in the top-level folders ``agent/`` and ``controller/``; the
``netcheck/agent`` and ``netcheck/controller`` entries here are symbolic links to them.
"""

__version__ = "0.1.0"
