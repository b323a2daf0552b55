"""astrostack: containerized MPI clusters for radio astronomy on OpenStack."""

__version__ = "0.1.0"
