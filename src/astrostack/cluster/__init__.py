"""The cluster once its VMs exist: Swarm nodes and tasks, MPI hostfile,
readiness of the nodes, and running commands on the manager or the master."""
