#!/bin/bash
# NFS server: format and mount the Cinder volume found by its id, export it to
# the cluster subnet only, and run the cluster's image registry on it.
# shellcheck source=common.sh
. /usr/local/lib/astrostack/common.sh

apply_fault_at_start
NOTES="{}"

# Cinder volumes appear as virtio disks whose serial is the volume id's first
# 20 characters (KVM); SCSI buses show the whole id.
volume_device() {
  local dev
  for dev in "/dev/disk/by-id/virtio-${VOLUME_ID:0:20}" "/dev/disk/by-id/scsi-0QEMU_QEMU_HARDDISK_${VOLUME_ID:0:20}" \
             "/dev/disk/by-id/scsi-SQEMU_QEMU_HARDDISK_${VOLUME_ID:0:20}" "/dev/disk/by-id/wwn-0x${VOLUME_ID//-/}"; do
    if [ -b "$dev" ]; then readlink -f "$dev"; return 0; fi
  done
  return 1
}

prepare_volume() {
  mkdir -p "$EXPORT_PATH"
  if mountpoint -q "$EXPORT_PATH"; then
    log "$EXPORT_PATH already mounted (local cloud: shared directory instead of a Cinder volume)"
    NOTES='{"volume": "local shared directory"}'
    return 0
  fi
  local dev=""
  retry 60 5 volume_device >/dev/null || fail "volume $VOLUME_ID did not appear within 5 min"
  dev=$(volume_device)
  if ! blkid "$dev" >/dev/null 2>&1; then mkfs.ext4 -q -L astroshare "$dev"; fi
  grep -q " $EXPORT_PATH " /etc/fstab || echo "$dev $EXPORT_PATH ext4 defaults,nofail 0 2" >>/etc/fstab
  mount "$EXPORT_PATH"
  mark volume_mounted
}

export_share() {
  if ! grep -qw nfsd /proc/filesystems && ! modprobe nfsd 2>/dev/null; then
    if is_local_cloud; then
      log "no kernel NFS server here: the local cloud shares the directory directly"
      return 0
    fi
    fail "this kernel has no NFS server (nfsd)"
  fi
  echo "$EXPORT_PATH $PRIVATE_CIDR(rw,sync,no_subtree_check,no_root_squash)" >/etc/exports.d/astrostack.exports
  if [ -d /run/systemd/system ]; then systemctl enable --now nfs-server; fi
  exportfs -ra
  mark exported
}

start_registry() {
  if [ -n "$REGISTRY" ]; then return 0; fi
  mkdir -p "$EXPORT_PATH/.registry" /etc/docker/registry
  # Debian's docker-registry reads this file; its default turns on htpasswd auth.
  cat >/etc/docker/registry/config.yml <<CONF
version: 0.1
storage:
  filesystem:
    rootdirectory: $EXPORT_PATH/.registry
  delete:
    enabled: true
http:
  addr: :5000
CONF
  if [ -d /run/systemd/system ]; then
    systemctl restart docker-registry
  else
    setsid docker-registry serve /etc/docker/registry/config.yml >/var/log/docker-registry.log 2>&1 </dev/null &
  fi
  retry 30 1 curl -fsS http://127.0.0.1:5000/v2/ >/dev/null || fail "registry did not answer on :5000"
  mark registry_ready
}

prepare_volume
mkdir -p /etc/exports.d
export_share
start_registry
signal SUCCESS "nfs ready" "$(success_data "$NOTES")"
