#!/bin/bash
# astrostack host library: sourced by every role script. Settings come from
# /etc/astrostack/cluster.env; the signal credentials and the cluster secret
# live in 0600 files and are never echoed (no `set -x` anywhere).
set -Eeuo pipefail

ASTRO_ETC=/etc/astrostack
# shellcheck source=/dev/null
. "$ASTRO_ETC/cluster.env"
STARTED_AT=$(date +%s)
declare -A TIMINGS=()

log() { echo "astrostack[$ROLE/$HOST_ID] $(date -u +%H:%M:%S) $*" >&2; }

# Seconds since this script started, recorded under a step name.
mark() { TIMINGS[$1]=$(( $(date +%s) - STARTED_AT )); }

timings_json() {
  local out="" key
  for key in "${!TIMINGS[@]}"; do out="$out\"$key\": ${TIMINGS[$key]},"; done
  echo "{${out%,}}"
}

# signal STATUS REASON DATA_JSON: tell Heat's wait condition; retried for about
# 4 minutes (a restart of Heat's API is ridden out), from the 3rd failure on each
# one said on the console, where astrostack looks when a host stays silent while
# Heat answers astrostack. python3 rather than curl: every cloud image has it.
signal() {
  local status=$1 reason=$2 data=${3:-\{\}}
  if ! python3 - "$status" "$reason" "$HOST_ID" "$data" "$ASTRO_ETC/signal" <<'PY'
import json, sys, time, urllib.error, urllib.request
status, reason, host, data, creds = sys.argv[1:6]
fields = dict(line.rstrip("\n").split("=", 1) for line in open(creds) if "=" in line)
body = json.dumps({"status": status, "reason": reason, "id": host, "data": data}).encode()
request = urllib.request.Request(fields["url"], data=body, method="POST", headers={
    "X-Auth-Token": fields["token"], "Content-Type": "application/json", "Accept": "application/json"})
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
where = fields["url"].split("?")[0]
attempts = 30
for attempt in range(1, attempts + 1):
    try:
        opener.open(request, timeout=20).read()
        sys.exit(0)
    except (urllib.error.URLError, OSError) as exc:
        print(f"signal attempt {attempt}/{attempts} to {where}: {exc}", file=sys.stderr)
        if attempt >= 3:
            print(f"ASTROSTACK-SIGNAL-UNREACHABLE attempt={attempt} {where} {exc}", file=sys.stderr, flush=True)
        time.sleep(min(2 * attempt, 10))
sys.exit(1)
PY
  then
    log "could not signal $status to Heat after 30 tries"
    return 1
  fi
  log "signalled $status: $reason"
}

# signal_ready REASON DATA_JSON: SUCCESS, or fail saying the signal could not be sent.
signal_ready() {
  signal SUCCESS "$1" "$2" || fail "could not signal SUCCESS to Heat's wait condition after 30 tries"
}

# A failure is signalled to Heat, or, once the host has signalled and
# reports through the share (report_through_share), written there.
fail() {
  trap - ERR
  log "FAILED: $1"
  if [ -n "${STATUS_FILE:-}" ]; then
    status failed "$1"
  else
    signal FAILURE "$HOST_ID: $1" "{\"role\": \"$ROLE\"}" || true
  fi
  exit 1
}

on_error() { fail "line $1: '$2' exited $3"; }
trap 'on_error "$LINENO" "$BASH_COMMAND" "$?"' ERR

# retry TRIES DELAY CMD...: bounded retries of one command.
retry() {
  local tries=$1 delay=$2 n=1
  shift 2
  until "$@"; do
    if (( n >= tries )); then return 1; fi
    n=$((n + 1))
    sleep "$delay"
  done
}

# Faults injected on purpose (spec `faults:`), to see how a cluster fails.
fault_for_me() {
  local var="FAULT_${HOST_ID//-/_}"
  echo "${!var:-}"
}

# die-after-boot: the VM powers itself off, as a crashed or stopped VM would.
die_soon() {
  sleep 3
  poweroff -f
}

apply_fault_at_start() {
  case "$(fault_for_me)" in
    never-signal) log "fault injection: never-signal"; exit 0 ;;
    cloud-init-fail) fail "fault injection: cloud-init-fail" ;;
    die-after-boot) log "fault injection: die-after-boot"; die_soon & ;;
    *) ;;
  esac
}

my_ip() {
  ip -4 -o route get "${NFS_IP:-1.1.1.1}" 2>/dev/null | sed -n 's/.* src \([0-9.]*\).*/\1/p'
}

registry_address() {
  if [ -n "$REGISTRY" ]; then echo "$REGISTRY"; else echo "$NFS_IP:5000"; fi
}

# The MTU of the interface the host reaches the cluster network through:
# 1450 on VXLAN tenant networks, whatever the cloud says elsewhere.
host_mtu() {
  local dev
  dev=$(ip -4 -o route get "${NFS_IP:-1.1.1.1}" 2>/dev/null | sed -n 's/.* dev \([^ ]*\).*/\1/p')
  cat "/sys/class/net/${dev:-eth0}/mtu" 2>/dev/null || echo 1500
}

write_docker_daemon_config() {
  local registries="[]"
  if [ "$REGISTRY_INSECURE" = true ]; then registries="[\"$(registry_address)\"]"; fi
  mkdir -p /etc/docker
  printf '{"insecure-registries": %s, "mtu": %s, "log-driver": "json-file", "log-opts": {"max-size": "20m"}}\n' \
    "$registries" "$(host_mtu)" >/etc/docker/daemon.json
}

# The application image as the hosts pull it: the spec's reference when it
# names its registry, else from the registry (the spec's or the cluster's).
image_ref() {
  case "$APP_IMAGE" in
    */*/*|*.*/*|*:[0-9]*/*) echo "$APP_IMAGE" ;;
    *) echo "$(registry_address)/$APP_IMAGE" ;;
  esac
}

# Pull the application image in the background as soon as Docker runs, so the
# download overlaps the rest of the boot; the containers' own pull reports errors.
prefetch_app_image() {
  setsid docker pull -q "$(image_ref)" >/var/log/astrostack-prefetch.log 2>&1 </dev/null &
}

# The application image is in the cluster's registry (or the spec's) once
# astrostack has pushed it there: wait for it (bounded) rather than let every
# task fail on "manifest unknown". An image in another registry is pulled as is.
# Called by the scripts that start containers (nodes.sh, taskqueue.sh), which
# define `status` (their report on the share).
wait_for_image() {
  case "$APP_IMAGE" in */*/*|*.*/*|*:[0-9]*/*) return 0 ;; esac
  status starting "waiting for $(image_ref) in the registry"
  python3 - "$(registry_address)" "$APP_IMAGE" "$NODES_TIMEOUT" <<'PY' || fail "$(image_ref) did not appear in the registry within $NODES_TIMEOUT s"
import sys, time, urllib.error, urllib.request
registry, image, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
repository, _, tag = image.rpartition(":") if ":" in image.rsplit("/", 1)[-1] else (image, "", "latest")
request = urllib.request.Request(f"http://{registry}/v2/{repository}/manifests/{tag}", method="HEAD", headers={
    "Accept": "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json"})
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
deadline = time.monotonic() + timeout
while time.monotonic() < deadline:
    try:
        opener.open(request, timeout=10)
        sys.exit(0)
    except (urllib.error.URLError, OSError):
        time.sleep(2)
sys.exit(1)
PY
  mark image_available
}

# install_missing PACKAGE...: apt-get only what the image lacks (one update).
install_missing() {
  local missing=() pkg
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
  done
  (( ${#missing[@]} )) || return 0
  if [ "$INSTALL_PACKAGES" != true ]; then
    fail "the image lacks ${missing[*]} and servers.install_packages is false"
  fi
  command -v apt-get >/dev/null || fail "the image is not Debian-family (no apt-get): it lacks ${missing[*]}"
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  retry 5 10 apt-get update -q >/dev/null || fail "apt-get update failed 5 times"
  retry 3 10 apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null \
    || fail "apt-get install ${missing[*]} failed 3 times"
  mark packages_installed
}

install_role_packages() {
  local wanted=()
  read -r -a wanted <<<"$PACKAGES"
  install_missing "${wanted[@]}"
}

# The IPv4 neighbour table is one per kernel: every container keeps an entry
# per peer it talks to, and Linux's 1024 overflowed at 200 nodes (packets to
# new peers dropped, MPI connections hung). NEIGH_GC_THRESH is sized from the
# spec by `astrostack render`. A container-VM (the local cloud) shares its
# host's kernel and cannot set it: its host does, and this says so.
# Writes VALUE into the kernel setting FILE unless it holds more already.
raise_to() { (( $(cat "$1") >= $2 )) || echo "$2" >"$1"; }

size_neighbour_table() {
  local t1 t2 t3 dir=${NEIGH_DIR:-/proc/sys/net/ipv4/neigh/default}
  local conf=${NEIGH_CONF:-/etc/sysctl.d/60-astrostack-neighbours.conf}
  read -r t1 t2 t3 <<<"$NEIGH_GC_THRESH"
  if ! [ -w "$dir/gc_thresh3" ]; then
    log "neighbour table: not this host's to size (the kernel is shared, e.g. a container-VM); wanted gc_thresh3 >= $t3"
    return 0
  fi
  if (( $(cat "$dir/gc_thresh3") >= t3 )); then return 0; fi
  # Kept for a reboot (systemd-sysctl), applied now.
  printf 'net.ipv4.neigh.default.gc_thresh1 = %s\nnet.ipv4.neigh.default.gc_thresh2 = %s\nnet.ipv4.neigh.default.gc_thresh3 = %s\n' \
    "$t1" "$t2" "$t3" >"$conf"
  if ! { raise_to "$dir/gc_thresh3" "$t3" && raise_to "$dir/gc_thresh2" "$t2" && raise_to "$dir/gc_thresh1" "$t1"; }; then
    fail "cannot size the neighbour table ($dir)"
  fi
  log "neighbour table: gc_thresh1-3 $t1 $t2 $t3"
}

start_docker() {
  [ -d /run/systemd/system ] || fail "systemd is not running: astrostack needs a systemd image"
  size_neighbour_table
  write_docker_daemon_config
  systemctl enable docker >/dev/null 2>&1 || true
  systemctl restart docker
  retry 60 1 docker info >/dev/null 2>&1 || fail "docker did not start within 60 s"
  block_metadata_from_containers
  mark docker_ready
}

# The metadata service hands out this host's user-data (the cluster secret,
# the signal token): containers must not reach it. The host itself still can.
block_metadata_from_containers() {
  iptables -C DOCKER-USER -d 169.254.169.254/32 -j REJECT 2>/dev/null \
    || iptables -I DOCKER-USER -d 169.254.169.254/32 -j REJECT
}

# lookupcache=positive: a host waits on the share for files another host
# writes (the join token, the manager's address); an NFS client that cached
# "no such file" would not look again for up to acdirmin (30 s).
mount_share() {
  mkdir -p "$MOUNT_POINT"
  grep -q " $MOUNT_POINT " /etc/fstab || \
    echo "$NFS_IP:$EXPORT_PATH $MOUNT_POINT nfs4 defaults,_netdev,hard,timeo=600,lookupcache=positive 0 0" >>/etc/fstab
  if ! mountpoint -q "$MOUNT_POINT"; then
    # tried every second: the NFS server is often still exporting when a host is here
    retry 300 1 mount "$MOUNT_POINT" || fail "NFS $NFS_IP:$EXPORT_PATH not mountable after 5 min"
  fi
  mark share_mounted
}

# The control folder on the share, readable by root only.
control_dir() {
  local dir="$MOUNT_POINT/.astrostack"
  mkdir -p "$dir"
  chmod 0700 "$dir"
  echo "$dir"
}

# After the host signalled Heat, progress and failures are reported through
# the share: <share>/.astrostack/nodes-<host>.json, which the cluster probe
# reads. `report_through_share` sets this up; `status STATE REASON` writes it,
# and from then on `fail` writes there instead of signalling Heat.
report_through_share() {
  STATUS_FILE="$(control_dir)/nodes-$HOST_ID.json"
}

status() {
  python3 -c 'import json,sys,time; print(json.dumps({"host": sys.argv[1], "state": sys.argv[2], "reason": sys.argv[3], "ip": sys.argv[4], "time": time.time()}))' \
    "$HOST_ID" "$1" "$2" "$(my_ip)" >"$STATUS_FILE.tmp"
  mv "$STATUS_FILE.tmp" "$STATUS_FILE"
}

# Encrypt stdin with the cluster secret (from Heat) into FILE on the share.
publish_secret() {
  openssl enc -aes-256-cbc -pbkdf2 -salt -pass "file:$ASTRO_ETC/secret" -out "$1.tmp"
  mv "$1.tmp" "$1"
}

# fetch_secret FILE SECONDS: wait for FILE on the share (looked for every second,
# at most SECONDS) and decrypt it to stdout.
fetch_secret() {
  retry "$2" 1 test -s "$1" || fail "$1 did not appear on the share within $2 s"
  openssl enc -d -aes-256-cbc -pbkdf2 -pass "file:$ASTRO_ETC/secret" -in "$1"
}

docker_version() { docker version --format '{{.Server.Version}}' 2>/dev/null || echo unknown; }

success_data() {
  python3 -c 'import json,sys; print(json.dumps({"role": sys.argv[1], "ip": sys.argv[2], "docker": sys.argv[3], "seconds": json.loads(sys.argv[4]), "extra": json.loads(sys.argv[5])}))' \
    "$ROLE" "$(my_ip)" "$(docker_version)" "$(timings_json)" "${1:-{\}}"
}
