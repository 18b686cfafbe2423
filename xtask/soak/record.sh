#!/bin/bash
# The soak harness (run by `cargo xtask soak record`): steady real workloads and a
# schedule of injected regressions, recorded by two nodepulse agents (1 s and 10 s).
#   record.sh NODEPULSE DURATION_S OUT_DIR KVM_GUEST_PROCESS [inject|steady] [full|light] [LEARN_S]
# Injections start a minute after LEARN_S (default 1200, the detector's default
# learning_period: an injection while the series still learn is neither caught nor
# missed), squeeze first (the one injection that moves request or run-queue p99 2x or
# more), then every 10 minutes while an injection and 3 minutes after it still fit.
# `light` keeps the soak's own cost low on a shared node: the CPU-contended cgroups run
# at a quarter of the load (2x10 %, 1x5 %), the KVM guest starts every 5 s, not 1 s, the
# tmpfs device's reader (40 % of a core at 1000 IOPS) runs at 250 IOPS, and the steady
# devices' files are 256 MiB, not 1 GiB (direct I/O: their size does not change latency).
# Writes OUT_DIR/soak-1s.jsonl, soak-10s.jsonl, injections.jsonl (kind, start, end,
# device, cgroup per injection) and notes.log; removes its devices, cgroups and
# processes on exit.
set -u
BIN=$1 DUR=$2 OUT=$3 GUEST=$4 MODE=${5:-inject} LOAD=${6:-full} LEARN=${7:-1200}
case $LOAD in
  full) CPU_LOAD=40 SQUEEZE_LOAD=20 VM_PAUSE=1 INJ_IOPS=1000 IMG_4M=256 ;;
  light) CPU_LOAD=10 SQUEEZE_LOAD=5 VM_PAUSE=5 INJ_IOPS=250 IMG_4M=64 ;;
  *) echo "record.sh: load '$LOAD' is neither full nor light" >&2; exit 2 ;;
esac
cd "$OUT" || exit 1
log() { echo "$(date -u +%FT%TZ) $*" | tee -a notes.log; }
PIDS=()
DEVS=()
V2=$(awk '$3 == "cgroup2" { print $2; exit }' /proc/mounts)
V1_BLKIO=$(awk '$3 == "cgroup" && $4 ~ /(^|,)blkio(,|$)/ { print $2; exit }' /proc/mounts)
V1_CPU=$(awk '$3 == "cgroup" && $4 ~ /(^|,)cpu(,|$)/ { print $2; exit }' /proc/mounts)
CGDIRS="$V2 $V1_BLKIO $V1_CPU"

cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  sleep 2
  for d in "${DEVS[@]}"; do losetup -d "$d" 2>/dev/null; done
  rm -f /dev/shm/npsoak-inj.img
  for d in $CGDIRS; do rmdir "$d"/npsoak-* 2>/dev/null; done
}
trap cleanup EXIT

# in_cg NAME CMD...: CMD in cgroup NAME of every hierarchy, in the background.
in_cg() {
  local cg=$1; shift
  for d in $CGDIRS; do mkdir -p "$d/npsoak-$cg"; done
  sh -c 'for d in '"$CGDIRS"'; do echo $$ > $d/npsoak-'"$cg"'/cgroup.procs; done; exec "$@"' sh "$@" &
  PIDS+=($!)
}

# Steady devices over files on the node's disk, written in full beforehand.
for f in a b c; do
  [ -s soak-$f.img ] || dd if=/dev/urandom of=soak-$f.img bs=4M count=$IMG_4M oflag=direct status=none || { rm -f soak-$f.img; exit 1; }
done
[ -s soak-idle.img ] || dd if=/dev/zero of=soak-idle.img bs=4M count=64 oflag=direct status=none || { rm -f soak-idle.img; exit 1; }
# The injection device lives on tmpfs: its competing readers and writers do not reach
# the node's disk, so the steady devices stay steady while regressions are injected.
dd if=/dev/urandom of=/dev/shm/npsoak-inj.img bs=4M count=128 status=none
for f in a b c idle; do
  d=$(losetup --direct-io=on -f --show "$PWD/soak-$f.img") || exit 1
  DEVS+=("$d"); eval "D_$f=$d"
done
DI=$(losetup -f --show /dev/shm/npsoak-inj.img) || exit 1
DEVS+=("$DI")
log "devices: a=$D_a b=$D_b c=$D_c idle=$D_idle inj=$DI (tmpfs)"

: > injections.jsonl
"$BIN" record --interval 1s --reports $((DUR + 60)) --output soak-1s.jsonl 2> agent-1s.log &
PIDS+=($!)
"$BIN" record --interval 10s --reports $((DUR / 10 + 6)) --output soak-10s.jsonl 2> agent-10s.log &
PIDS+=($!)
sleep 5
FIO="fio --thread --direct=1 --ioengine=libaio --time_based --runtime=$DUR --output=/dev/null"
in_cg fio-a $FIO --name=a --filename="$D_a" --rw=randrw --rwmixread=70 --bs=4k --iodepth=2 --rate_iops=800
in_cg fio-b $FIO --name=b --filename="$D_b" --rw=randread --bs=4k --iodepth=8 --rate_iops=2000
in_cg fio-c $FIO --name=c --filename="$D_c" --rw=randwrite --bs=64k --iodepth=1 --rate_iops=100
in_cg inj $FIO --name=inj --filename="$DI" --rw=randread --bs=4k --iodepth=4 --rate_iops=$INJ_IOPS
in_cg cpu stress-ng --cpu 2 --cpu-load $CPU_LOAD --timeout "${DUR}s" --quiet
in_cg squeeze stress-ng --cpu 1 --cpu-load $SQUEEZE_LOAD --timeout "${DUR}s" --quiet
in_cg vm sh -c 'end=$(( $(date +%s) + '"$DUR"' )); while [ $(date +%s) -lt $end ]; do NODEPULSE_KVM_GUEST_ITERATIONS=5000 '"$GUEST"' -name guest=instance-soak > /dev/null; sleep '"$VM_PAUSE"'; done'
log "steady: fio-a randrw 70/30 4k qd2 800 IOPS on $D_a; fio-b randread 4k qd8 2000 IOPS on $D_b; fio-c randwrite 64k qd1 100 IOPS on $D_c; inj randread 4k qd4 $INJ_IOPS IOPS on $DI; stress-ng 2x$CPU_LOAD % (npsoak-cpu), 1x$SQUEEZE_LOAD % (npsoak-squeeze); KVM guest loop (npsoak-vm); $D_idle idle"

# Limits: cgroup v2 io.max / cpu.max where the controller is on v2, else v1's
# blkio.throttle / cfs quota.
MAJMIN=$(printf '%d:%d' "0x$(stat -c %t "$DI")" "0x$(stat -c %T "$DI")")
throttle() { # iops (0 = none)
  if grep -qw io "$V2/cgroup.controllers" 2>/dev/null && [ -e "$V2/npsoak-inj/io.max" ]; then
    [ "$1" = 0 ] && echo "$MAJMIN riops=max" > "$V2/npsoak-inj/io.max" || echo "$MAJMIN riops=$1" > "$V2/npsoak-inj/io.max"
  else
    echo "$MAJMIN $1" > "$V1_BLKIO/npsoak-inj/blkio.throttle.read_iops_device"
  fi
}
squeeze() { # on | off
  if [ -e "$V2/npsoak-squeeze/cpu.max" ]; then
    [ "$1" = on ] && echo "2000 100000" > "$V2/npsoak-squeeze/cpu.max" || echo "max 100000" > "$V2/npsoak-squeeze/cpu.max"
  else
    [ "$1" = on ] && echo 2000 > "$V1_CPU/npsoak-squeeze/cpu.cfs_quota_us" || echo -1 > "$V1_CPU/npsoak-squeeze/cpu.cfs_quota_us"
  fi
}

START=$(date +%s)
KINDS=(squeeze reader writer throttle)
i=0
[ "$MODE" = steady ] && { log "steady only: no injections"; sleep "$DUR"; exit 0; }
sleep $((LEARN + 60))
while [ $(( $(date +%s) - START + 120 + 180 )) -le "$DUR" ]; do
  kind=${KINDS[$((i % 4))]}
  s=$(date -u +%FT%TZ)
  log "inject $kind"
  cg=npsoak-inj
  case $kind in
    reader) $FIO --name=rd --filename="$DI" --rw=randread --bs=64k --iodepth=32 --numjobs=2 --runtime=120 ;;
    writer) $FIO --name=wr --filename="$DI" --rw=randwrite --bs=64k --iodepth=32 --numjobs=2 --runtime=120 ;;
    throttle) throttle 300; sleep 120; throttle 0 ;;
    squeeze) cg=npsoak-squeeze; squeeze on; sleep 120; squeeze off ;;
  esac
  echo "{\"kind\":\"$kind\",\"start\":\"$s\",\"end\":\"$(date -u +%FT%TZ)\",\"device\":\"$DI\",\"cgroup\":\"$cg\"}" >> injections.jsonl
  i=$((i + 1))
  sleep 480
done
log "injections done; recording to the end"
sleep $(( DUR - ($(date +%s) - START) ))
