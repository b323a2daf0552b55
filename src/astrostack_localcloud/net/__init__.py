"""``astrostack-localnet``: the data plane Neutron's agents would give the local cloud.

Read from the Neutron API (:mod:`.neutron_state`), turned into a desired
state (:mod:`.desired`), applied by small idempotent steps: Linux bridges,
namespaces and veths (:mod:`.dataplane`), security groups as iptables and
ipsets (:mod:`.firewall`), dnsmasq per network (:mod:`.dhcp`), routers with
NAT (:mod:`.router`), the metadata proxy (:mod:`.metadata`), driven by
Neutron's notifications and a periodic resync (:mod:`.agent`).

The pure modules (``neutron_state``, ``desired``, ``firewall``, ``router``,
``dhcp``'s renderers) import only the standard library, so astrostack's own
venv can test them.
"""
