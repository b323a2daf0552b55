"""Code that OpenStack loads on astrostack's local cloud.

Installed into the OpenStack venv by ``astrostack local start``: the WSGI
launcher (:mod:`.wsgi`), the ML2 mechanism driver (:mod:`.neutron_mech`), the
Cinder volume driver (:mod:`.cinder_driver`), the Nova virt driver
(:mod:`.nova`) and the network agent (:mod:`.net`). Imports only the standard
library, the Docker SDK and what the OpenStack venv has; never ``astrostack``.
"""
