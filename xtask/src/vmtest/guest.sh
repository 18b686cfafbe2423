#!/bin/busybox sh
# /init of the vmtest guest (xtask/src/vmtest): loads the modules, runs nodepulse and
# known workloads, and writes every result between `@@begin NAME` / `@@end NAME RC`
# lines to the second serial port, which the host checks. Then powers off.

/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mkdir -p /sys/fs/cgroup
mount -t cgroup2 cgroup2 /sys/fs/cgroup

OUT=/dev/ttyS1
ITERATIONS=$(sed -n 's/.*vmtest.kvm_iterations=\([0-9]*\).*/\1/p' /proc/cmdline)
IO_COUNT=$(sed -n 's/.*vmtest.io_count=\([0-9]*\).*/\1/p' /proc/cmdline)
ERROR_COUNT=$(sed -n 's/.*vmtest.error_count=\([0-9]*\).*/\1/p' /proc/cmdline)
TCP_EXCHANGES=$(sed -n 's/.*vmtest.tcp_exchanges=\([0-9]*\).*/\1/p' /proc/cmdline)

# section NAME COMMAND...: the command's output, framed, with its exit code; its
# standard error follows as section NAME.stderr.
section() {
    name=$1
    shift
    echo "@@begin $name" >"$OUT"
    "$@" >"$OUT" 2>/tmp/stderr
    rc=$?
    echo "@@end $name $rc" >"$OUT"
    echo "@@begin $name.stderr" >"$OUT"
    cat /tmp/stderr >"$OUT"
    echo "@@end $name.stderr 0" >"$OUT"
}

load_modules() {
    for m in $(cat /lib/modules/order); do
        insmod "/lib/modules/$m" || echo "insmod $m failed"
    done
}
section modules load_modules

# The disks appear asynchronously once their drivers probe them.
for i in $(seq 50); do
    [ -b /dev/nvme0n1 ] && [ -b /dev/vda ] && [ -b /dev/vdb ] && [ -b /dev/sda ] && break
    sleep 0.2
done
truncate -s 64M /tmp/loop.img
section loop losetup /dev/loop0 /tmp/loop.img

section uname uname -r
section check nodepulse check --json

# [agent] btf: the kernel's own BTF copied to a file, which the recording below reads
# instead (its log says so, and which kind each probe attached by).
btf_file_config() {
    cp /sys/kernel/btf/vmlinux /tmp/vmlinux.btf
    # Run-queue saturation is off by default: the recording checks it. The run-queue
    # check needs the kernel's run delay read around each of the agent's map reads.
    printf '[agent]\nbtf = "/tmp/vmlinux.btf"\n[probes.sched]\n%s\n' \
        'saturation = true
schedstat_reference = true' >/tmp/btf.toml
}
btf_file_config
# Seconds since boot, and the time since $1 on standard error (the matrix's cost).
now() { cut -d' ' -f1 /proc/uptime; }
took() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "took %.2f s\n", b - a }' >&2; }

block_stats() {
    for d in /sys/block/*; do
        echo "$(basename "$d") $(cat "$d/stat")"
    done
}

# Known I/O on every disk: IO_COUNT direct 4 KiB writes, then as many direct reads.
block_io() {
    for dev in nvme0n1 vda sda loop0; do
        dd if=/dev/zero of=/dev/$dev bs=4096 count="$IO_COUNT" oflag=direct 2>&1 | tail -1
        dd if=/dev/$dev of=/dev/null bs=4096 count="$IO_COUNT" iflag=direct 2>&1 | tail -1
    done
}

# Reads the host's blkdebug fails with EIO (sector 8192 of vdb, 4 KiB blocks): each
# direct read is one request completing with BLK_STS_IOERR. Prints how many failed.
block_errors() {
    failed=0
    for i in $(seq "$ERROR_COUNT"); do
        dd if=/dev/vdb of=/dev/null bs=4096 count=1 skip=1024 iflag=direct 2>/dev/null ||
            failed=$((failed + 1))
    done
    echo "$failed"
}

# Two busy loops sharing the one CPU inside a cgroup of their own: run-queue waits.
# Then the cgroup churns (judge.rs: cgroup_churn_check): the loops are stopped, their
# timeslices read from /proc/<pid>/schedstat (third field, one per switch-in), killed, and
# the cgroup removed at once, mid-interval, with samples the agent has not read yet.
contention() {
    mkdir -p /sys/fs/cgroup/vmtest-busy
    for i in 1 2; do
        sh -c 'echo $$ > /sys/fs/cgroup/vmtest-busy/cgroup.procs; while :; do :; done' &
        echo "busy pid $!"
    done
    sleep 2
    pids=$(cat /sys/fs/cgroup/vmtest-busy/cgroup.procs)
    slices=0
    for pid in $pids; do kill -STOP "$pid"; done
    for pid in $pids; do
        while ! grep -q '^State:.*stopped' "/proc/$pid/status"; do usleep 1000; done
        slices=$((slices + $(cut -d' ' -f3 "/proc/$pid/schedstat")))
    done
    for pid in $pids; do kill -KILL "$pid"; done
    for pid in $pids; do wait "$pid" 2>/dev/null; done
    rmdir /sys/fs/cgroup/vmtest-busy
    echo "timeslices $slices"
}

# The nested guest, with a QEMU-like command line as libvirt starts it. It stays alive
# (waiting on a FIFO) until the agent has reported, so its VM is named from its
# command line rather than by pid.
mkfifo /tmp/kvm-go
NODEPULSE_KVM_GUEST_ITERATIONS=$ITERATIONS NODEPULSE_KVM_GUEST_WAIT=1 \
    /bin/kvm_guest_process \
    -name guest=instance-0000002a,debug-threads=on \
    -uuid 2f6a5c1e-0b1d-4d35-9a51-6c7f1e0d2a2a </tmp/kvm-go >/tmp/kvm.json &
KVM_GUEST=$!
exec 3>/tmp/kvm-go
kvm_guest() {
    echo go >&3
    for i in $(seq 600); do
        [ -s /tmp/kvm.json ] && cat /tmp/kvm.json && return 0
        sleep 0.1
    done
    echo "the nested guest printed nothing"
    return 1
}

# A second nested guest that exits mid-interval (judge.rs: vm_churn_check): two rounds
# (two VMs of one process); the agent reports twice after the first, so it has read
# and named the process while it ran; the second round's exits are still unread when
# the process exits right after them (stdin closed: no final wait).
CHURN_VM_UUID=7d3b9e2a-4c1f-4b8e-a6d5-0f9e8c7b6a5d
kvm_churn() {
    t0=$(now)
    mkfifo /tmp/kvm-churn-go
    NODEPULSE_KVM_GUEST_ITERATIONS=$ITERATIONS NODEPULSE_KVM_GUEST_WAIT=1 \
        NODEPULSE_KVM_GUEST_ROUNDS=2 /bin/kvm_guest_process \
        -name guest=instance-0000002b,debug-threads=on \
        -uuid "$CHURN_VM_UUID" </tmp/kvm-churn-go >/tmp/kvm-churn.json &
    vm=$!
    exec 6>/tmp/kvm-churn-go
    echo go >&6
    for i in $(seq 600); do
        [ -s /tmp/kvm-churn.json ] && break
        sleep 0.05
    done
    wait_lines $(($(lines) + 2)) || return 1
    echo go >&6
    exec 6>&-
    wait "$vm"
    rc=$?
    cat /tmp/kvm-churn.json
    took "$t0"
    return $rc
}

# A loop device detached mid-interval (judge.rs: loop_churn_check): loop1 bound to a
# file, read IO_COUNT times, its sysfs stat read and the device detached at once.
loop_churn() {
    t0=$(now)
    echo "before $(cat /sys/block/loop1/stat)"
    truncate -s 16M /tmp/loop1.img
    losetup /dev/loop1 /tmp/loop1.img || return 1
    dd if=/dev/loop1 of=/dev/null bs=4096 count="$IO_COUNT" iflag=direct 2>/dev/null
    echo "after $(cat /sys/block/loop1/stat)"
    losetup -d /dev/loop1 || return 1
    rm /tmp/loop1.img
    took "$t0"
}

# TCP on loopback to a Ceph OSD port (the probe's default peer groups): 4 MiB fetched
# over HTTP (busybox's nc stops after its first KiB).
ip link set lo up
tcp_traffic() {
    mkdir -p /tmp/www
    dd if=/dev/zero of=/tmp/www/blob bs=65536 count=64 2>/dev/null
    httpd -f -p 127.0.0.1:6800 -h /tmp/www &
    server=$!
    sleep 0.5
    wget -q -O /dev/null http://127.0.0.1:6800/blob
    rc=$?
    kill "$server"
    wait "$server" 2>/dev/null
    return $rc
}

# TCP over a veth pair into a second network namespace (busybox's ip names the peer
# itself, veth0, and moves it by pid; unshare/nsenter make and enter the namespace):
# TCP_EXCHANGES strict request/reply turns of one segment each to a Ceph monitor port.
# Each side then receives exactly one segment per turn while its own is unacknowledged,
# the segments the probe samples. Prints the turns completed, RetransSegs grown in both
# namespaces and the packets that crossed the veth.
RETRANS_AWK='/^Tcp:/ { if (!h) { for (i = 1; i <= NF; i++) if ($i == "RetransSegs") c = i; h = 1 } else print $c }'
# RetransSegs of the first namespace and of the one process $1 is in, summed.
retrans_both() {
    echo $(($(awk "$RETRANS_AWK" /proc/net/snmp) + $(nsenter -t "$1" -n awk "$RETRANS_AWK" /proc/net/snmp)))
}
tcp_veth() {
    t0=$(now)
    unshare -n sleep 600 &
    ns=$!
    sleep 0.2
    ip link add name np0 type veth || return 1
    ip link set veth0 netns "$ns" || return 1
    nsenter -t "$ns" -n sh -c 'ip link set lo up && ip addr add 10.77.0.2/24 dev veth0 &&
        ip link set veth0 up' || return 1
    ip addr add 10.77.0.1/24 dev np0 && ip link set np0 up || return 1
    retrans0=$(retrans_both "$ns")
    tx0=$(cat /sys/class/net/np0/statistics/tx_packets)
    rx0=$(cat /sys/class/net/np0/statistics/rx_packets)
    nsenter -t "$ns" -n nc -l -p 3300 -e cat &
    server=$!
    sleep 0.5
    rm -f /tmp/tcp-req /tmp/tcp-rep
    mkfifo /tmp/tcp-req /tmp/tcp-rep
    nc 10.77.0.2 3300 </tmp/tcp-req >/tmp/tcp-rep &
    client=$!
    exec 4>/tmp/tcp-req 5</tmp/tcp-rep
    done_turns=0
    for i in $(seq "$TCP_EXCHANGES"); do
        echo "turn $i" >&4
        read -r reply <&5 || break
        [ "$reply" = "turn $i" ] && done_turns=$((done_turns + 1))
    done
    exec 4>&- 5<&-
    sleep 0.5
    kill "$client" "$server" 2>/dev/null
    wait "$client" "$server" 2>/dev/null
    retrans1=$(retrans_both "$ns")
    echo "turns $done_turns"
    echo "retrans_segs $((retrans1 - retrans0))"
    echo "veth_tx $(($(cat /sys/class/net/np0/statistics/tx_packets) - tx0))"
    echo "veth_rx $(($(cat /sys/class/net/np0/statistics/rx_packets) - rx0))"
    kill "$ns"
    wait "$ns" 2>/dev/null
    ip link del np0 2>/dev/null
    took "$t0"
    return 0
}

# [agent] keep_attached across two SIGKILLs (judge.rs: restart): a block-only agent
# pinning its maps in bpffs and saving its state in $RESTART_DIR, under direct reads of
# vda that go on while it is down. Prints vda's sysfs reads once the first run has
# attached (before the reads start), at each spawn and kill and at the end, the saved
# start time after the first run's first report and after the last run's exit, the
# exit codes,
# and how many later runs adopted the pinned maps. The last run's final report and the
# logs follow as sections of their own.
RESTART_DIR=/tmp/np-restart
vda_reads() { awk '{ print $1 }' /sys/block/vda/stat; }
saved_start() {
    zcat "$RESTART_DIR/state/state.json.gz" | grep -o '"start_unix_nano":[0-9]*' | cut -d: -f2
}
# restart_spawn N: starts run N (pid in RUN).
restart_spawn() {
    echo "spawn_$1 reads $(vda_reads)"
    nodepulse record --config "$RESTART_DIR/c.toml" --interval 1s \
        -o "$RESTART_DIR/run$1.jsonl" 2>"$RESTART_DIR/run$1.log" &
    RUN=$!
}
# restart_wait N attached|report: until run N has attached its probes or reported.
restart_wait() {
    for i in $(seq 500); do
        case $2 in
        attached) grep -q "first report in" "$RESTART_DIR/run$1.log" && return 0 ;;
        report) [ -s "$RESTART_DIR/run$1.jsonl" ] && return 0 ;;
        esac
        kill -0 "$RUN" 2>/dev/null || {
            echo "run $1 exited before it $2"
            return 1
        }
        sleep 0.02
    done
    echo "run $1 never $2"
    return 1
}
agent_restart() {
    t0=$(now)
    mkdir -p "$RESTART_DIR/state"
    mount -t bpf bpf /sys/fs/bpf || return 1
    printf '[agent]\nstate_dir = "%s"\nkeep_attached = true\nbpffs = "/sys/fs/bpf"\n%s\n' \
        "$RESTART_DIR/state" \
        '[probes.sched]
enabled = false
[probes.kvm]
enabled = false
[probes.tcp]
enabled = false' >"$RESTART_DIR/c.toml"
    restart_spawn 1
    restart_wait 1 attached || return 1
    echo "reads_start $(vda_reads)"
    # Rate-limited so the agent's start (its programs verified under TCG) keeps pace.
    (while [ ! -e "$RESTART_DIR/stop" ]; do
        dd if=/dev/vda of=/dev/null bs=4096 count=16 iflag=direct 2>/dev/null
        usleep 20000
    done) &
    reader=$!
    # Run 1 is killed after its first report (its state saved), run 2 once it has
    # adopted the pins but before it saved anything: a crash loop's case.
    for run in 1 2; do
        if [ "$run" = 1 ]; then
            restart_wait 1 report || return 1
            echo "start_1 $(saved_start)"
        else
            restart_spawn 2
            restart_wait 2 attached || return 1
        fi
        kill -KILL "$RUN"
        wait "$RUN"
        echo "killed_$run rc $? reads $(vda_reads)"
        # The gap: the reads go on, nothing reads the maps.
        sleep 0.1
    done
    restart_spawn 3
    restart_wait 3 attached || return 1
    touch "$RESTART_DIR/stop"
    wait "$reader"
    echo "reads_end $(vda_reads)"
    kill -TERM "$RUN"
    wait "$RUN"
    echo "run_3_rc $?"
    echo "start_3 $(saved_start)"
    echo "adopted $(cat "$RESTART_DIR/run2.log" "$RESTART_DIR/run3.log" |
        grep -c "continuing the kernel's counts from pinned maps")"
    took "$t0"
    return 0
}

lines() { wc -l </tmp/record.jsonl 2>/dev/null || echo 0; }
# How many reports there were, CLOCK_MONOTONIC and the kernel's run-queue totals, read
# right after a report appeared (runqueue.rs: the reports between two such reads are
# judged against the kernel's run delay around the agent's own map reads; these reads
# show how far the guest's reads lag the agent's).
schedstat_at() {
    echo "reports $(lines)"
    grep -m1 'now at' /proc/timer_list
    cat /proc/schedstat
}
wait_lines() {
    want=$1
    # Polled finely: the run-queue check reads /proc/schedstat right after a report.
    for i in $(seq 3000); do
        [ "$(lines)" -ge "$want" ] && return 0
        sleep 0.02
    done
    echo "timed out waiting for $want reports"
    return 1
}

nodepulse record --config /tmp/btf.toml --interval 1s -o /tmp/record.jsonl 2>/tmp/record.log &
AGENT=$!
section attached wait_lines 1
# Past the agent's first report (its start-up work), so both ends of the run-queue
# window follow a steady report.
section steady wait_lines 2
section schedstat_before schedstat_at
section stats_before block_stats
section block_io block_io
section block_errors block_errors
section kvm kvm_guest
section contention contention
section tcp tcp_traffic
section tcp_veth tcp_veth
section kvm_churn kvm_churn
section loop_churn loop_churn
sync
section stats_after block_stats
section schedstat_after cat /proc/schedstat
# Two more reports: the interval holding the last completions is closed and reported.
n=$(lines)
section settled wait_lines $((n + 2))
# Closes the run-queue window the first report opened (judged against reports 2..).
section schedstat_settled schedstat_at
echo done >&3
exec 3>&-
wait "$KVM_GUEST"
kill -TERM "$AGENT"
wait "$AGENT"
section record_rc echo "$?"
section restart agent_restart
section restart_report tail -n 1 "$RESTART_DIR/run3.jsonl"
section restart_logs cat "$RESTART_DIR/run1.log" "$RESTART_DIR/run2.log" "$RESTART_DIR/run3.log"
section record cat /tmp/record.jsonl
section record_log cat /tmp/record.log
section dmesg dmesg

echo "@@done" >"$OUT"
sync
poweroff -f
