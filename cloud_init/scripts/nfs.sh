#!/bin/bash
# NFS server: format and mount the Cinder volume found by its id, export it to
# the cluster subnet only, and run the cluster's image registry on it.
# shellcheck source=common.sh
. /usr/local/lib/astrostack/common.sh

apply_fault_at_start
install_role_packages
NOTES="{}"

# A Cinder volume's serial is its id: virtio disks show its first 20
# characters, SCSI buses (hw_disk_bus=scsi, common on Ceph) the whole id.
volume_device() {
  local dev id=$VOLUME_ID
  for dev in "/dev/disk/by-id/virtio-${id:0:20}" "/dev/disk/by-id/virtio-$id" \
             "/dev/disk/by-id/scsi-0QEMU_QEMU_HARDDISK_$id" "/dev/disk/by-id/scsi-0QEMU_QEMU_HARDDISK_${id:0:20}" \
             "/dev/disk/by-id/scsi-SQEMU_QEMU_HARDDISK_$id" "/dev/disk/by-id/scsi-SQEMU_QEMU_HARDDISK_${id:0:20}" \
             "/dev/disk/by-id/wwn-0x${id//-/}"; do
    if [ -b "$dev" ]; then readlink -f "$dev"; return 0; fi
  done
  return 1
}

# Mounted by UUID (a device name can change between boots), and NFS is
# started only once it is mounted: never export the empty root-disk folder.
prepare_volume() {
  local dev uuid
  mkdir -p "$EXPORT_PATH"
  retry 300 1 volume_device >/dev/null || fail "volume $VOLUME_ID did not appear within 5 min"
  dev=$(volume_device)
  if ! blkid "$dev" >/dev/null 2>&1; then mkfs.ext4 -q -L astroshare "$dev"; fi
  uuid=$(blkid -s UUID -o value "$dev")
  [ -n "$uuid" ] || fail "volume $VOLUME_ID ($dev) has no filesystem UUID"
  grep -q " $EXPORT_PATH " /etc/fstab || \
    echo "UUID=$uuid $EXPORT_PATH ext4 defaults,nofail,x-systemd.device-timeout=60 0 2" >>/etc/fstab
  mountpoint -q "$EXPORT_PATH" || mount "$EXPORT_PATH"
  NOTES="{\"volume_device\": \"$dev\", \"uuid\": \"$uuid\"}"
  mark volume_mounted
}

export_share() {
  mkdir -p /etc/exports.d /etc/systemd/system/nfs-server.service.d
  echo "$EXPORT_PATH $PRIVATE_CIDR(rw,sync,no_subtree_check,no_root_squash)" >/etc/exports.d/astrostack.exports
  printf '[Unit]\nRequiresMountsFor=%s\n' "$EXPORT_PATH" >/etc/systemd/system/nfs-server.service.d/astrostack.conf
  systemctl daemon-reload
  systemctl enable nfs-server >/dev/null 2>&1 || true
  systemctl restart nfs-server || fail "nfs-server did not start: $(systemctl status nfs-server 2>&1 | tail -n 3 | tr '\n' ' ')"
  exportfs -ra || fail "exportfs -ra failed"
  mark exported
}

# Debian's docker-registry unit runs as the docker-registry user: its root
# must be that user's, or every push gets a 500 while /v2/ answers 200. So
# the registry is ready when a test blob uploads, not when /v2/ answers.
start_registry() {
  if [ -n "$REGISTRY" ]; then return 0; fi
  mkdir -p "$EXPORT_PATH/.registry" /etc/docker/registry
  chown -R docker-registry: "$EXPORT_PATH/.registry"
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
  systemctl enable docker-registry >/dev/null 2>&1 || true
  systemctl restart docker-registry
  retry 30 1 registry_accepts_a_push || fail "registry on :5000 does not accept a push"
  mark registry_ready
}

registry_accepts_a_push() {
  python3 - <<'PY'
import hashlib, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
base = "http://127.0.0.1:5000"
opener.open(base + "/v2/", timeout=5).read()
start = opener.open(urllib.request.Request(base + "/v2/astrostack-probe/blobs/uploads/", method="POST"), timeout=5)
location = start.headers["Location"]
location = location if location.startswith("http") else base + location
blob = b"astrostack registry probe"
digest = "sha256:" + hashlib.sha256(blob).hexdigest()
separator = "&" if "?" in location else "?"
put = urllib.request.Request(f"{location}{separator}digest={digest}", data=blob, method="PUT",
                             headers={"Content-Type": "application/octet-stream"})
opener.open(put, timeout=5).read()
PY
}

prepare_volume
export_share
start_registry
signal_ready "nfs ready" "$(success_data "$NOTES")"
