"""Connections to a cloud: a real OpenStack (clouds.yaml) or the local Heat engine.

For a real cloud, credentials come only from ``openstack.connect(cloud=...)``
(clouds.yaml, ``OS_CLOUD``). For ``"local"``, the noauth Heat API is reached
through a keystoneauth session whose auth plugin answers the endpoint itself:
openstacksdk's ``auth_type: none`` plus an endpoint override fails version
discovery against ``/v1/<project>``, a static ``EndpointData`` does not.
"""

from __future__ import annotations

from typing import Any, Optional

import openstack
import requests
from heatclient import client as heat_client_factory
from keystoneauth1 import discover, noauth
from keystoneauth1 import exceptions as ks_exceptions
from keystoneauth1 import session as ks_session
from openstack import connection as os_connection
from openstack import exceptions as os_exceptions

from astrostack.errors import CloudError, CloudUnreachable, LocalCloudError

LOCAL_CLOUD = "local"
HEAT_API_VERSION = "1"
NOT_RUNNING = "local Heat engine is not running; run `astrostack local start`"


class LocalHeatAuth(noauth.NoAuth):
    """No token; every endpoint lookup answers the local orchestration endpoint."""

    def __init__(self, endpoint: str):
        super().__init__(endpoint=endpoint)
        self.orchestration_endpoint = endpoint

    def get_endpoint_data(self, session: Any, *args: Any, **kwargs: Any) -> discover.EndpointData:
        """A static answer, so no version discovery against ``/v1/<project>`` happens."""
        return discover.EndpointData(
            catalog_url=self.orchestration_endpoint,
            service_url=self.orchestration_endpoint,
            service_type="orchestration",
            interface="public",
            api_version=(1, 0),
        )

    def get_endpoint(self, session: Any, *args: Any, **kwargs: Any) -> str:
        return self.orchestration_endpoint


def is_local(cloud: Optional[str]) -> bool:
    return cloud == LOCAL_CLOUD


def local_session() -> ks_session.Session:
    """A keystoneauth session on the running local engine.

    LocalCloudError when it is not running; CloudUnreachable when its process
    runs but its API does not answer.
    """
    from astrostack.local import engine

    state = engine.status()
    if not state.running:
        raise LocalCloudError(NOT_RUNNING)
    if not state.answering:
        raise CloudUnreachable(f"local Heat engine (pid {state.pid}) does not answer on "
                               f"{state.url}", hint=f"see {state.log_path}")
    direct = requests.Session()
    direct.trust_env = False  # the engine is on this machine: never via an HTTP proxy
    return ks_session.Session(auth=LocalHeatAuth(state.url), session=direct)


def connect(cloud: Optional[str] = None) -> os_connection.Connection:
    """An openstacksdk Connection to ``cloud`` (``"local"``, a clouds.yaml name, or OS_CLOUD)."""
    if is_local(cloud):
        return os_connection.Connection(session=local_session(), region_name="RegionOne")
    try:
        return openstack.connect(cloud=cloud or None)
    except (os_exceptions.SDKException, ks_exceptions.ClientException) as exc:
        raise CloudError(f"cannot connect to cloud {cloud or '(OS_CLOUD)'}: {_one_line(exc)}",
                         hint="check clouds.yaml or OS_CLOUD") from exc


def heat_client(cloud: Optional[str] = None) -> Any:
    """A python-heatclient v1 client on the same session as ``connect(cloud)``."""
    session = local_session() if is_local(cloud) else connect(cloud).session
    return heat_client_factory.Client(HEAT_API_VERSION, session=session,
                                      service_type="orchestration")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__
