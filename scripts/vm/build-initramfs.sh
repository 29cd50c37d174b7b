#!/usr/bin/env bash
# Build a tiny busybox initramfs for testing the guest agent under QEMU (TCG).
#
# Usage:
#   scripts/vm/build-initramfs.sh OUT.cpio [SRC[:DEST] ...]
#
#   Each extra file SRC is copied into the image at DEST (default: /agent/<basename SRC>).
#   A file placed at /agent/run is the default guest program (see init below).
#   Dynamic libraries needed by each extra ELF file (ldd) are copied automatically.
#
#   The archive is not compressed: under TCG, decompressing a 110 MB Bun binary
#   costs more boot time than reading it (first answer 4.0 s plain vs 5.1 s zstd).
#
# Environment:
#   KVER      kernel version (default: newest /lib/modules/*-cloud-amd64)
#   MODULES   space separated extra kernel modules to include (deps resolved)
#
# Kernel command line parameters understood by /init:
#   agent_run=/path        guest program (default /agent/run)
#   agent_args=a,b,c       arguments (comma separated) for the guest program
#   agent_nopoweroff       drop to a busybox shell on ttyS0 instead of powering off
#   agent_shell            start a shell instead of the guest program
#   agent_quiet            don't echo init progress messages
# Other KEY=VALUE parameters without a dot (e.g. UV_THREADPOOL_SIZE=8) are passed by the
# kernel into the environment of /init and therefore of the guest program.
# The guest program's exit status is printed as "AGENT-EXIT <code>" on ttyS0.
set -euo pipefail

if [ $# -lt 1 ]; then
  sed -n '2,25p' "$0" >&2
  exit 2
fi

OUT=$(realpath -m "$1"); shift

KVER=${KVER:-$(ls -1 /lib/modules | grep -- '-cloud-amd64$' | sort -V | tail -1)}
MODDIR=/lib/modules/$KVER
[ -d "$MODDIR" ] || { echo "no modules dir $MODDIR (apt-get install linux-image-cloud-amd64)" >&2; exit 1; }
BUSYBOX=$(command -v busybox || true)
[ -n "$BUSYBOX" ] || { echo "busybox not found (apt-get install busybox-static)" >&2; exit 1; }
if ldd "$BUSYBOX" >/dev/null 2>&1; then
  echo "warning: $BUSYBOX is dynamically linked; install busybox-static" >&2
fi

STAGE=$(mktemp -d /tmp/initramfs.XXXXXX)
trap 'rm -rf "$STAGE"' EXIT

mkdir -p "$STAGE"/{bin,sbin,dev,proc,sys,tmp,run,etc,mnt,root,agent,lib/modules,usr/bin,usr/sbin}
cp "$BUSYBOX" "$STAGE/bin/busybox"
ln -s busybox "$STAGE/bin/sh"

# ---------------------------------------------------------------- modules
# Wanted modules in load order; dependencies are resolved via modules.dep.
# (ext4/jbd2/mbcache/crc16/crc32c are built into the Debian cloud kernel; any
# name that is builtin or absent is skipped.)
WANT="virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci
      virtio_console virtio_blk failover net_failover virtio_net
      crc16 mbcache jbd2 crc32c_generic crc32c_intel libcrc32c ext4 vsock_loopback ${MODULES:-}"
declare -A SEEN=()
ORDER=()
modpath() { # name -> relative path from modules.dep (accepts - or _)
  local n=${1//-/_} alt=${1//_/-}
  grep -m1 -E "(^|/)(${n}|${alt})\.ko(\.xz|\.zst|\.gz)?:" "$MODDIR/modules.dep" | cut -d: -f1
}
add_mod() {
  local rel=$1
  [ -n "${SEEN[$rel]:-}" ] && return 0
  SEEN[$rel]=1
  local deps
  deps=$(grep -m1 -E "^${rel//./\\.}:" "$MODDIR/modules.dep" | cut -d: -f2)
  # modules.dep lists deps so that the LAST must be loaded first
  local d arr=()
  for d in $deps; do arr=("$d" "${arr[@]}"); done
  for d in "${arr[@]}"; do add_mod "$d"; done
  ORDER+=("$rel")
}
for m in $WANT; do
  rel=$(modpath "$m" || true)
  if [ -z "$rel" ]; then
    if grep -qE "/${m//-/_}\.ko$|/${m//_/-}\.ko$" "$MODDIR/modules.builtin"; then :; else
      echo "note: module $m not found (not builtin either) - skipped" >&2; fi
    continue
  fi
  add_mod "$rel"
done
: > "$STAGE/lib/modules/load-order"
for rel in "${ORDER[@]}"; do
  base=$(basename "$rel"); name=${base%%.ko*}
  case "$rel" in
    *.ko.xz)  xz -dc  "$MODDIR/$rel" > "$STAGE/lib/modules/$name.ko" ;;
    *.ko.zst) zstd -qdc "$MODDIR/$rel" > "$STAGE/lib/modules/$name.ko" ;;
    *.ko.gz)  gzip -dc "$MODDIR/$rel" > "$STAGE/lib/modules/$name.ko" ;;
    *)        cp "$MODDIR/$rel" "$STAGE/lib/modules/$name.ko" ;;
  esac
  echo "$name" >> "$STAGE/lib/modules/load-order"
done

# ---------------------------------------------------------------- extra files + libs
copy_libs() { # copy the shared libraries (and loader) that ELF file $1 needs
  local f=$1 line lib
  file -L "$f" 2>/dev/null | grep -q 'dynamically linked' || return 0
  while read -r line; do
    lib=""
    case "$line" in
      *"=>"*/*) lib=$(echo "$line" | sed -E 's/.*=> ([^ ]+) .*/\1/') ;;
      /*)       lib=$(echo "$line" | awk '{print $1}') ;;
    esac
    [ -n "$lib" ] && [ -e "$lib" ] || continue
    mkdir -p "$STAGE$(dirname "$lib")"
    # copy the real file to exactly the path the loader/ldd reports (no symlinks)
    cp -L "$lib" "$STAGE$lib"
  done < <(ldd "$f" 2>/dev/null)
}

# Always ship glibc basics so that `bun build --compile` output runs even when
# the binary is added later (e.g. via a disk image).
for l in /lib64/ld-linux-x86-64.so.2 /lib/x86_64-linux-gnu/libc.so.6 /lib/x86_64-linux-gnu/libm.so.6 \
         /lib/x86_64-linux-gnu/libpthread.so.0 /lib/x86_64-linux-gnu/libdl.so.2 \
         /lib/x86_64-linux-gnu/librt.so.1; do
  [ -e "$l" ] && { mkdir -p "$STAGE$(dirname "$l")"; cp -L "$l" "$STAGE$l"; }
done

for spec in "$@"; do
  src=${spec%%:*}
  if [ "$spec" = "$src" ]; then dest=/agent/$(basename "$src"); else dest=${spec#*:}; fi
  [ -e "$src" ] || { echo "missing extra file $src" >&2; exit 1; }
  mkdir -p "$STAGE$(dirname "$dest")"
  cp -L "$src" "$STAGE$dest"
  [ -x "$src" ] && chmod +x "$STAGE$dest"
  copy_libs "$src"
done

# ---------------------------------------------------------------- etc
echo 'root:x:0:0:root:/root:/bin/sh' > "$STAGE/etc/passwd"
echo 'root:x:0:' > "$STAGE/etc/group"
echo 'hosts: files' > "$STAGE/etc/nsswitch.conf"
printf '127.0.0.1 localhost\n::1 localhost\n' > "$STAGE/etc/hosts"
: > "$STAGE/etc/resolv.conf"

# ---------------------------------------------------------------- hotplug
# No udev here: mdev -d (netlink) runs this for vport devices, keeping
# /dev/virtio-ports/<name> as udev's rule does, on hot-plug and unplug too.
mkdir -p "$STAGE/lib/mdev"
echo 'vport[0-9]+p[0-9]+ 0:0 600 */lib/mdev/virtio-port' > "$STAGE/etc/mdev.conf"
cat > "$STAGE/lib/mdev/virtio-port" <<'HOTPLUG'
#!/bin/sh
mkdir -p /dev/virtio-ports
case "$ACTION" in
  remove)
    for link in /dev/virtio-ports/*; do
      [ "$(readlink "$link")" = "../$MDEV" ] && rm -f "$link"
    done ;;
  *)
    name=$(cat "/sys/class/virtio-ports/$MDEV/name" 2>/dev/null)
    [ -n "$name" ] && ln -sf "../$MDEV" "/dev/virtio-ports/$name" ;;
esac
HOTPLUG
chmod +x "$STAGE/lib/mdev/virtio-port"

# ---------------------------------------------------------------- init
cat > "$STAGE/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null || mount -t tmpfs tmpfs /dev
mkdir -p /dev/pts /dev/shm /dev/virtio-ports
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run

CMDLINE=$(cat /proc/cmdline)
RUN=/agent/run ARGS="" POWEROFF=1 SHELL_ONLY=0 QUIET=0
for p in $CMDLINE; do
  case "$p" in
    agent_run=*)  RUN=${p#agent_run=} ;;
    agent_args=*) ARGS=$(echo "${p#agent_args=}" | tr ',' ' ') ;;
    agent_nopoweroff) POWEROFF=0 ;;
    agent_shell) SHELL_ONLY=1 ;;
    agent_quiet) QUIET=1 ;;
  esac
done
log() { [ "$QUIET" = 1 ] || echo "[init $(cut -d' ' -f1 /proc/uptime)] $*"; }

while read -r m; do
  [ -n "$m" ] && { insmod "/lib/modules/$m.ko" 2>/dev/null || log "insmod $m failed"; }
done < /lib/modules/load-order

# devtmpfs creates /dev/vportNpM itself; without it mknod from sysfs.
for d in /sys/class/virtio-ports/vport*; do
  [ -e "$d/name" ] || continue
  n=$(cat "$d/name"); v=$(basename "$d")
  [ -e "/dev/$v" ] || { mm=$(cat "$d/dev"); mknod "/dev/$v" c "${mm%%:*}" "${mm##*:}"; }
  [ -n "$n" ] && ln -sf "../$v" "/dev/virtio-ports/$n"
done
mdev -d
ip link set lo up 2>/dev/null
hostname guest
log "ports: $(ls /dev/virtio-ports | tr '\n' ' ')"

if [ "$SHELL_ONLY" = 1 ]; then
  setsid cttyhack sh
  poweroff -f
fi
if [ ! -x "$RUN" ]; then
  echo "AGENT-EXIT 127 (no guest program at $RUN)"
  [ "$POWEROFF" = 1 ] && poweroff -f
  setsid cttyhack sh
  poweroff -f
fi
# As busybox init does: poweroff sends SIGUSR2 to PID 1, halt SIGUSR1, reboot SIGTERM.
# The guest program runs in the background so that these traps fire at once.
trap 'log "poweroff requested"; kill -TERM $child 2>/dev/null; sync; poweroff -f' USR1 USR2
trap 'log "reboot requested"; kill -TERM $child 2>/dev/null; sync; reboot -f' TERM
log "exec $RUN $ARGS"
"$RUN" $ARGS &
child=$!
wait $child; rc=$?
while kill -0 $child 2>/dev/null; do wait $child; rc=$?; done
echo "AGENT-EXIT $rc"
if [ "$POWEROFF" = 1 ]; then
  sync
  poweroff -f
fi
setsid cttyhack sh
poweroff -f
INIT
chmod +x "$STAGE/init"

# ---------------------------------------------------------------- pack
mkdir -p "$(dirname "$OUT")"
cd "$STAGE"
find . -print0 | cpio --null -o -H newc --quiet > "$OUT"
echo "initramfs: $OUT ($(du -h "$OUT" | cut -f1)), kernel $KVER, modules: $(tr '\n' ' ' < lib/modules/load-order)" >&2
