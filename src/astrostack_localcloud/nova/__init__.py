"""The local cloud's hypervisor: Nova servers as systemd container-VMs.

:mod:`.driver` is the Nova virt driver (``compute_driver =
astrostack_localcloud.nova.driver.ContainerDriver``); it translates Nova's
objects and calls :class:`.hypervisor.Hypervisor`, which does the work with
Docker, ``ip``, ``losetup`` and the hypervisor channel and knows nothing of
Nova (the functional tests drive it directly). Every module but ``driver``
imports only the standard library and the Docker SDK.
"""
