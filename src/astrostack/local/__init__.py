"""The local cloud: Docker engine, container VMs and a real Heat engine on one machine."""
