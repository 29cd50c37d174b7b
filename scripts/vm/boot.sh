#!/usr/bin/env bash
# Boot the test VM (TCG, 1 vCPU) with a busybox initramfs built by build-initramfs.sh.
#
# Usage:
#   scripts/vm/boot.sh start WORKDIR INITRAMFS [options] [-- extra qemu args]
#       start qemu in the background, wait until the chardev sockets exist, return.
#   scripts/vm/boot.sh run   WORKDIR INITRAMFS [options] [-- extra qemu args]
#       start qemu in the foreground; qemu is killed (by PID) if this script is
#       interrupted/terminated; exits with qemu's exit status.
#   scripts/vm/boot.sh stop  WORKDIR
#       quit via QMP, then SIGTERM/SIGKILL the PID in WORKDIR/qemu.pid.
#   scripts/vm/boot.sh wait  WORKDIR [TIMEOUT_S]
#       wait for the VM (PID in WORKDIR/qemu.pid) to exit (default 60 s, then stop it).
#
# Options:
#   --append "STR"   extra kernel command line (e.g. "agent_args=a,b agent_nopoweroff")
#   --kernel PATH    kernel (default: newest /boot/vmlinuz-*-cloud-amd64)
#   --mem MB         memory (default 512)
#   --disk FILE      attach FILE as a virtio-blk disk (raw) -> /dev/vda in the guest
#   --no-net         no NIC (default: -nic user,restrict=on,model=virtio-net-pci)
#   env VM_CPU       qemu -cpu model (default "max": Bun needs AVX2; qemu64 gives SIGILL, exit 132)
#
# WORKDIR gets:
#   qemu.pid      PID of qemu
#   console.log   guest serial console (ttyS0: kernel + init + guest program stdout/stderr)
#   qmp.sock      QMP unix socket (server, nowait)
#   agent.sock    chardev for virtserialport org.kvmmanager.agent.0 (server=on,wait=off)
#   qga.sock      chardev for virtserialport org.qemu.guest_agent.0 (server=on,wait=off)
#   qemu.stderr   qemu's own stderr
#   start.ns      host CLOCK_REALTIME in ns (date +%s%N) right before qemu was exec'ed
#
# The guest port device ids are "agentport" and "qgaport" (for QMP device_del),
# the virtio-serial controller is "vser0".
set -euo pipefail

die() { echo "boot.sh: $*" >&2; exit 1; }

cmd=${1:-}; shift || true
[ -n "$cmd" ] || { sed -n '2,30p' "$0" >&2; exit 2; }
WORK=${1:-}; shift || true
[ -n "$WORK" ] || die "WORKDIR missing"
mkdir -p "$WORK"; WORK=$(realpath "$WORK")
PIDFILE=$WORK/qemu.pid

qemu_alive() { [ -s "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

stop_vm() {
  [ -s "$PIDFILE" ] || return 0
  local pid; pid=$(cat "$PIDFILE")
  if kill -0 "$pid" 2>/dev/null; then
    # polite: QMP quit (ignore errors), then TERM, then KILL
    if [ -S "$WORK/qmp.sock" ] && command -v socat >/dev/null; then
      printf '{"execute":"qmp_capabilities"}\n{"execute":"quit"}\n' |
        timeout 2 socat - "UNIX-CONNECT:$WORK/qmp.sock" >/dev/null 2>&1 || true
    fi
    for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$PIDFILE"
}

case "$cmd" in
  stop) stop_vm; exit 0 ;;
  wait)
    t=${1:-60}; end=$(( $(date +%s) + t ))
    while qemu_alive; do
      if [ "$(date +%s)" -ge "$end" ]; then echo "boot.sh: timeout, stopping VM" >&2; stop_vm; exit 124; fi
      sleep 0.1
    done
    rm -f "$PIDFILE"; exit 0 ;;
  start|run) ;;
  *) die "unknown command $cmd" ;;
esac

INITRD=${1:-}; shift || true
[ -f "$INITRD" ] || die "initramfs '$INITRD' not found"
KERNEL=$(ls -1 /boot/vmlinuz-*-cloud-amd64 2>/dev/null | sort -V | tail -1 || true)
CPU=${VM_CPU:-max} MEM=512 APPEND="" DISK="" NET=1
while [ $# -gt 0 ]; do
  case "$1" in
    --append) APPEND="$APPEND $2"; shift 2 ;;
    --kernel) KERNEL=$2; shift 2 ;;
    --mem) MEM=$2; shift 2 ;;
    --disk) DISK=$2; shift 2 ;;
    --no-net) NET=0; shift ;;
    --) shift; break ;;
    *) die "unknown option $1" ;;
  esac
done
[ -f "$KERNEL" ] || die "kernel not found (apt-get install linux-image-cloud-amd64)"
qemu_alive && die "a VM is already running with PID $(cat "$PIDFILE") in $WORK"
rm -f "$WORK"/{qmp,agent,qga}.sock "$WORK/console.log"

ARGS=(
  -accel tcg -cpu "$CPU" -smp 1 -m "$MEM"
  -nodefaults -no-user-config -display none -vga none -monitor none -no-reboot
  -kernel "$KERNEL" -initrd "$INITRD"
  -append "console=ttyS0 panic=-1 quiet loglevel=4 $APPEND"
  -serial "file:$WORK/console.log"
  -qmp "unix:$WORK/qmp.sock,server=on,wait=off"
  -device virtio-serial-pci,id=vser0
  -chardev "socket,path=$WORK/agent.sock,server=on,wait=off,id=agentchr"
  -device virtserialport,chardev=agentchr,name=org.kvmmanager.agent.0,id=agentport
  -chardev "socket,path=$WORK/qga.sock,server=on,wait=off,id=qgachr"
  -device virtserialport,chardev=qgachr,name=org.qemu.guest_agent.0,id=qgaport
)
if [ "$NET" = 1 ]; then ARGS+=(-nic user,restrict=on,model=virtio-net-pci); fi
if [ -n "$DISK" ]; then ARGS+=(-drive "file=$DISK,format=raw,if=virtio,cache=unsafe"); fi
ARGS+=("$@")

: > "$WORK/qemu.stderr"
date +%s%N > "$WORK/start.ns"
qemu-system-x86_64 "${ARGS[@]}" </dev/null >>"$WORK/qemu.stderr" 2>&1 &
QPID=$!
echo "$QPID" > "$PIDFILE"

if [ "$cmd" = run ]; then
  trap 'stop_vm; exit 130' INT TERM HUP
  set +e; wait "$QPID"; rc=$?; set -e
  rm -f "$PIDFILE"
  exit $rc
fi

# start: wait for the sockets (qemu creates them before the guest runs)
for _ in $(seq 100); do
  [ -S "$WORK/agent.sock" ] && [ -S "$WORK/qmp.sock" ] && break
  kill -0 "$QPID" 2>/dev/null || { cat "$WORK/qemu.stderr" >&2; rm -f "$PIDFILE"; die "qemu exited early"; }
  sleep 0.05
done
[ -S "$WORK/agent.sock" ] || { stop_vm; die "qemu did not create sockets"; }
echo "$QPID"
