#!/bin/sh
# The "boot" of an astrostack local-cloud VM (a container).
#
# 1. make /sys and the cgroup v1 hierarchies writable (Docker-in-Docker needs them);
# 2. configure cloud-init for the NoCloud seed in /var/lib/cloud/seed/nocloud;
# 3. run the four cloud-init stages in boot order, output to
#    /var/log/cloud-init-output.log as cloud-init does on a VM;
# 4. stay alive with sshd in the foreground.
#
# Fault injection (set by the Heat plugin from the server's metadata):
#   ASTROSTACK_FAULT=cloud-init-fail  the final stage fails (as a broken runcmd would)
#   ASTROSTACK_FAULT=never-signal     cloud-init never runs, so nothing signals
#   ASTROSTACK_FAULT=die-after-boot   the VM stops ASTROSTACK_FAULT_DELAY_S (default 5)
#                                     seconds after boot, with exit code 137
set -u

OUTPUT_LOG=/var/log/cloud-init-output.log

log() { echo "astrostack-boot: $*" | tee -a "$OUTPUT_LOG"; }

# Docker mounts /sys and the cgroup v1 hierarchies read-only. A plain remount
# of a cgroup hierarchy fails ("mount point is busy"); a bind remount only
# changes this mount's flag, which is all the inner dockerd needs.
remount_rw() {
    mount -o remount,rw /sys || log "warning: cannot remount /sys read-write"
    awk '$3 == "cgroup" || $3 == "cgroup2" || $2 == "/sys/fs/cgroup" { print $2 }' /proc/self/mounts |
    while read -r mountpoint; do
        mount -o remount,bind,rw "$mountpoint" ||
            log "warning: cannot remount $mountpoint read-write"
    done
}

configure_cloud_init() {
    mkdir -p /etc/cloud/cloud.cfg.d /var/lib/cloud/seed/nocloud
    cat > /etc/cloud/cloud.cfg.d/90-astrostack-local.cfg <<'CFG'
# Written by astrostack-boot: local cloud, seed from /var/lib/cloud/seed/nocloud.
datasource_list: [NoCloud, None]
network:
  config: disabled
CFG
    [ -f /var/lib/cloud/seed/nocloud/meta-data ] || \
        printf 'instance-id: %s\nlocal-hostname: %s\n' "$(hostname)" "$(hostname)" \
            > /var/lib/cloud/seed/nocloud/meta-data
    [ -f /var/lib/cloud/seed/nocloud/user-data ] || \
        printf '#cloud-config\n{}\n' > /var/lib/cloud/seed/nocloud/user-data
}

run_cloud_init() {
    for stage in "init --local" "init" "modules --mode config" "modules --mode final"; do
        if [ "$stage" = "modules --mode final" ] && [ "${ASTROSTACK_FAULT:-}" = "cloud-init-fail" ]; then
            inject_final_stage_failure
        fi
        log "cloud-init $stage"
        # cloud-init tees its own output to $OUTPUT_LOG (output: all in cloud.cfg);
        # this copy goes to the container log.
        # shellcheck disable=SC2086
        cloud-init $stage 2>&1 || log "cloud-init $stage exited with $?"
    done
}

# Make the final stage fail the way a broken user-data does: the runcmd script
# the config stage wrote is replaced by one that exits 1 (so the user's runcmd,
# and any success signal in it, never runs), and a failing per-boot script
# guarantees an error even for user-data without runcmd.
inject_final_stage_failure() {
    log "fault injected: the final stage fails"
    failing='#!/bin/sh
echo "astrostack fault injected: cloud-init-fail" >&2
exit 1'
    if [ -f /var/lib/cloud/instance/scripts/runcmd ]; then
        printf '%s\n' "$failing" > /var/lib/cloud/instance/scripts/runcmd
    fi
    mkdir -p /var/lib/cloud/scripts/per-boot
    printf '%s\n' "$failing" > /var/lib/cloud/scripts/per-boot/00-astrostack-fault
    chmod 0755 /var/lib/cloud/scripts/per-boot/00-astrostack-fault
}

# cloud-init's ssh module makes host keys; this covers boots where it did not run.
ensure_host_keys() {
    ssh-keygen -A >/dev/null 2>&1 || log "warning: ssh-keygen -A failed"
    mkdir -p /run/sshd
}

# The kernel never delivers SIGKILL to a namespace's init (docker-init) from
# inside, so the fault kills this script's process, which by then has become
# sshd: docker-init then exits with 137 and the container stops, as if the VM
# had been powered off.
schedule_death() {
    delay="${ASTROSTACK_FAULT_DELAY_S:-5}"
    boot_pid=$$
    log "fault injected: this VM dies in ${delay} s"
    ( sleep "$delay"; log "fault injected: dying now"; kill -KILL "$boot_pid" ) &
}

main() {
    log "booting $(hostname) (local cloud)"
    remount_rw
    configure_cloud_init
    [ "${ASTROSTACK_FAULT:-}" = "die-after-boot" ] && schedule_death
    if [ "${ASTROSTACK_FAULT:-}" = "never-signal" ]; then
        log "fault injected: cloud-init does not run"
    else
        run_cloud_init
    fi
    ensure_host_keys
    log "boot finished"
    exec /usr/sbin/sshd -D -e
}

main "$@"
