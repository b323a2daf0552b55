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

# signal STATUS REASON DATA_JSON: tell Heat's wait condition; retried, bounded.
signal() {
  local status=$1 reason=$2 data=${3:-\{\}} payload url token
  payload=$(python3 -c 'import json,sys; print(json.dumps({"status": sys.argv[1], "reason": sys.argv[2], "id": sys.argv[3], "data": sys.argv[4]}))' \
    "$status" "$reason" "$HOST_ID" "$data")
  url=$(sed -n 's/^url=//p' "$ASTRO_ETC/signal")
  token=$(sed -n 's/^token=//p' "$ASTRO_ETC/signal")
  if ! curl -fsS --max-time 20 --retry 10 --retry-delay 3 --retry-connrefused \
      -X POST -H "X-Auth-Token: $token" -H 'Content-Type: application/json' \
      -H 'Accept: application/json' --data-binary "$payload" "$url" >/dev/null; then
    log "could not signal $status to Heat after 10 tries"
    return 1
  fi
  log "signalled $status: $reason"
}

fail() {
  trap - ERR
  log "FAILED: $1"
  signal FAILURE "$HOST_ID: $1" "{\"role\": \"$ROLE\"}" || true
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

# Faults injected on purpose (local cloud only), see docs/local-cloud.md.
fault_for_me() {
  local var="FAULT_${HOST_ID//-/_}"
  echo "${!var:-}"
}

# The local cloud's VM is a container: its init (PID 1) ends it on SIGTERM.
die_soon() {
  sleep 3
  if is_local_cloud; then kill -TERM 1; else poweroff -f; fi
}

apply_fault_at_start() {
  case "$(fault_for_me)" in
    never-signal) log "fault injection: never-signal"; exit 0 ;;
    cloud-init-fail) fail "fault injection: cloud-init-fail" ;;
    die-after-boot) log "fault injection: die-after-boot"; die_soon & ;;
    *) ;;
  esac
}

is_local_cloud() { [ -f "$ASTRO_ETC/local-cloud" ]; }

my_ip() {
  ip -4 -o route get "${NFS_IP:-1.1.1.1}" 2>/dev/null | sed -n 's/.* src \([0-9.]*\).*/\1/p'
}

registry_address() {
  if [ -n "$REGISTRY" ]; then echo "$REGISTRY"; else echo "$NFS_IP:5000"; fi
}

write_docker_daemon_config() {
  mkdir -p /etc/docker
  if [ "$REGISTRY_INSECURE" = true ]; then
    printf '{"insecure-registries": ["%s"], "log-driver": "json-file", "log-opts": {"max-size": "20m"}}\n' \
      "$(registry_address)" >/etc/docker/daemon.json
  else
    printf '{"log-driver": "json-file", "log-opts": {"max-size": "20m"}}\n' >/etc/docker/daemon.json
  fi
}

# Start Docker through systemd where it is PID 1; a container VM of the local
# cloud has no systemd, so dockerd is started directly there.
start_docker() {
  write_docker_daemon_config
  if [ -d /run/systemd/system ]; then
    systemctl enable docker >/dev/null 2>&1 || true
    systemctl restart docker
  elif ! docker info >/dev/null 2>&1; then
    log "no systemd: starting dockerd directly"
    setsid dockerd >/var/log/dockerd.log 2>&1 </dev/null &
  fi
  retry 60 1 docker info >/dev/null 2>&1 || fail "docker did not start within 60 s"
  mark docker_ready
}

mount_share() {
  mkdir -p "$MOUNT_POINT"
  if mountpoint -q "$MOUNT_POINT"; then
    log "share already mounted at $MOUNT_POINT (local cloud: shared directory instead of NFS)"
  else
    grep -q " $MOUNT_POINT " /etc/fstab || \
      echo "$NFS_IP:$EXPORT_PATH $MOUNT_POINT nfs4 defaults,_netdev,hard,timeo=600 0 0" >>/etc/fstab
    retry 60 5 mount "$MOUNT_POINT" || fail "NFS $NFS_IP:$EXPORT_PATH not mountable after 5 min"
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

# Encrypt stdin with the cluster secret (from Heat) into FILE on the share.
publish_secret() {
  openssl enc -aes-256-cbc -pbkdf2 -salt -pass "file:$ASTRO_ETC/secret" -out "$1.tmp"
  mv "$1.tmp" "$1"
}

# Wait for FILE on the share (bounded) and decrypt it to stdout.
fetch_secret() {
  retry "$2" 2 test -s "$1" || fail "$1 did not appear on the share"
  openssl enc -d -aes-256-cbc -pbkdf2 -pass "file:$ASTRO_ETC/secret" -in "$1"
}

docker_version() { docker version --format '{{.Server.Version}}' 2>/dev/null || echo unknown; }

success_data() {
  python3 -c 'import json,sys; print(json.dumps({"role": sys.argv[1], "ip": sys.argv[2], "docker": sys.argv[3], "seconds": json.loads(sys.argv[4]), "extra": json.loads(sys.argv[5])}))' \
    "$ROLE" "$(my_ip)" "$(docker_version)" "$(timings_json)" "${1:-{\}}"
}
