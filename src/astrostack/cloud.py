"""Connections to a cloud: any clouds.yaml cloud, the local one included.

Credentials come only from ``openstack.connect(cloud=...)`` (clouds.yaml,
``OS_CLOUD``). ``cloud: local`` in a spec names the clouds.yaml entry that
``astrostack local start`` writes for the OpenStack it runs on this machine;
past that name, the local cloud is a cloud like any other. Every connection
has an API timeout, so one hung socket cannot outlive the phase deadlines.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import openstack
from heatclient import client as heat_client_factory
from keystoneauth1 import exceptions as ks_exceptions
from openstack import connection as os_connection
from openstack import exceptions as os_exceptions

from astrostack.errors import CloudError

LOCAL_CLOUD = "local"
LOCAL_CLOUD_ENTRY = "astrostack-local"
LOCAL_ADMIN_ENTRY = "astrostack-local-admin"
HEAT_API_VERSION = "1"
API_TIMEOUT_S = 60


def default_cloud() -> str:
    """Where to look for a cluster astrostack has no record of: OS_CLOUD, else the local cloud."""
    return os.environ.get("OS_CLOUD") or LOCAL_CLOUD


def cloud_entry(cloud: Optional[str]) -> Optional[str]:
    """The clouds.yaml entry a spec's ``cloud`` names (``local`` is an alias)."""
    return LOCAL_CLOUD_ENTRY if cloud == LOCAL_CLOUD else cloud


def connect(cloud: Optional[str] = None) -> os_connection.Connection:
    """An openstacksdk Connection to ``cloud`` (a clouds.yaml name, ``local``, or OS_CLOUD)."""
    entry = cloud_entry(cloud)
    try:
        return openstack.connect(cloud=entry or None, api_timeout=API_TIMEOUT_S)
    except (os_exceptions.SDKException, ks_exceptions.ClientException) as exc:
        raise CloudError(f"cannot connect to cloud {entry or '(OS_CLOUD)'}: {one_line(exc)}",
                         hint=connect_hint(cloud)) from exc


def local_cloud_hint(cloud: Optional[str]) -> Optional[str]:
    """How to bring up the local cloud, if CLOUD (a spec's name or a clouds.yaml entry) is it."""
    if cloud in (LOCAL_CLOUD, LOCAL_CLOUD_ENTRY, LOCAL_ADMIN_ENTRY):
        return "the local cloud is not set up or not running: `astrostack local start`"
    return None


def connect_hint(cloud: Optional[str]) -> str:
    return local_cloud_hint(cloud) or "check clouds.yaml or OS_CLOUD"


def heat_client(cloud: Optional[str] = None) -> Any:
    """A python-heatclient v1 client on the same session as ``connect(cloud)``."""
    return heat_client_factory.Client(HEAT_API_VERSION, session=connect(cloud).session,
                                      service_type="orchestration")


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__
