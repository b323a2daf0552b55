"""ML2 mechanism driver ``astrostack``: binds every normal port to this machine's bridges.

The local cloud has no Neutron agents; its data plane is the
``astrostack-localnet`` agent and the Nova driver, which plug a port into
the Linux bridge of its network (:func:`naming.network_bridge`). Binding is
therefore unconditional: VIF type ``other`` (Nova 34 refuses ``bridge``:
"Linux bridge VIFs are no longer supported"), the bridge's name in
``vif_details["bridge_name"]`` (Nova passes it on as ``vif["details"]``),
status ACTIVE (so Neutron tells Nova network-vif-plugged).
"""

from __future__ import annotations

from neutron_lib import constants
from neutron_lib.api.definitions import portbindings
from neutron_lib.plugins.ml2 import api

from astrostack_localcloud import naming


class AstrostackMechanismDriver(api.MechanismDriver):
    """Bind each port of vnic_type ``normal`` on any host, on its network's first segment."""

    def initialize(self) -> None:
        """Nothing to set up: binding needs no state."""

    @property
    def connectivity(self) -> str:
        return portbindings.CONNECTIVITY_L2

    def bind_port(self, context: api.PortContext) -> None:
        if context.current.get(portbindings.VNIC_TYPE, portbindings.VNIC_NORMAL) != portbindings.VNIC_NORMAL:
            return
        for segment in context.segments_to_bind:
            context.set_binding(segment[api.ID], portbindings.VIF_TYPE_OTHER,
                                self.vif_details(context.network.current["id"]),
                                status=constants.PORT_STATUS_ACTIVE)
            return

    @staticmethod
    def vif_details(network_id: str) -> dict:
        return {
            portbindings.VIF_DETAILS_BRIDGE_NAME: naming.network_bridge(network_id),
            # Security groups are filtered by astrostack-localnet (iptables per port).
            portbindings.CAP_PORT_FILTER: True,
            portbindings.VIF_DETAILS_CONNECTIVITY: portbindings.CONNECTIVITY_L2,
        }
