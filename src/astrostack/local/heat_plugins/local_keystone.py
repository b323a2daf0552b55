"""The local engine's stand-in for Keystone (``keystone_backend`` in heat.conf).

Heat's own ``FakeKeystoneClient`` gives every stack user the id ``1234``. A
``OS::Heat::WaitConditionHandle``'s reference id is its stack user's id, and
a ``OS::Heat::WaitCondition`` finds its handle by that reference id: with two
handles in a stack (``nfs_handle``, ``hosts_handle``) both are ``1234``, and
``hosts_wait`` watched whichever handle came first in an order that changes
with each heat-all process (string hashing), counting the NFS server's signal
as a host's or never completing. Here each stack user gets an id of its own.

Loaded through ``plugin_dirs`` like the resource stand-ins (as
``heat.engine.plugins.local_keystone``): heat and the stdlib only.
"""

import uuid

from heat.engine.clients.os.keystone.fake_keystoneclient import FakeKeystoneClient

_USER_IDS = uuid.UUID("6f1c1c52-5b0e-4d43-9d4c-2f5d8a3b7e10")


class LocalKeystoneClient(FakeKeystoneClient):
    """FakeKeystoneClient with one user id per stack user name (stable, so a
    resource that creates its user again gets the same id)."""

    def create_stack_domain_user(self, username, project_id, password=None):
        return uuid.uuid5(_USER_IDS, "%s/%s" % (project_id, username)).hex
