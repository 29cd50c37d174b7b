#!/bin/sh
# Removes what install.sh installed. Idempotent. The config, state and audit log
# stay unless --purge is given (as apt's remove and purge).
#
# Usage: ./uninstall.sh [--prefix DIR] [--root DIR] [--purge]
#   --prefix and --root as given to install.sh
set -eu

usage() { sed -n '5,6p' "$0" | sed 's/^# \{0,1\}//'; }
fail() { echo "uninstall.sh: $*" >&2; exit 2; }

prefix=/usr/local
root=
purge=0
while [ $# -gt 0 ]; do
	case "$1" in
		--prefix) [ $# -ge 2 ] || fail "--prefix needs a directory"; prefix=$2; shift 2 ;;
		--prefix=*) prefix=${1#*=}; shift ;;
		--root) [ $# -ge 2 ] || fail "--root needs a directory"; root=$2; shift 2 ;;
		--root=*) root=${1#*=}; shift ;;
		--purge) purge=1; shift ;;
		-h|--help) usage; exit 0 ;;
		*) usage >&2; fail "unknown option '$1'" ;;
	esac
done
case "$prefix" in /*) ;; *) fail "--prefix must be an absolute path (got '$prefix')" ;; esac
root=${root%/}

if [ -z "$root" ]; then
	if [ -d /run/systemd/system ] && [ -e /etc/systemd/system/kvm-manager-agent.service ]; then
		systemctl stop kvm-manager-agent.service || true
	fi
	if [ -x /etc/init.d/kvm-manager-agent ]; then
		/etc/init.d/kvm-manager-agent stop || true
		if command -v update-rc.d >/dev/null 2>&1; then
			update-rc.d -f kvm-manager-agent remove >/dev/null || true
		elif command -v chkconfig >/dev/null 2>&1; then
			chkconfig --del kvm-manager-agent || true
		elif command -v rc-update >/dev/null 2>&1; then
			rc-update del kvm-manager-agent default || true
		fi
	fi
fi

for file in \
	"$root$prefix/bin/kvm-manager-agent" \
	"$root/etc/systemd/system/kvm-manager-agent.service" \
	"$root/etc/systemd/system/kvm-manager-agent.service.d/qga-port.conf" \
	"$root/etc/systemd/system/dev-virtio\x2dports-org.kvmmanager.agent.0.device.wants/kvm-manager-agent.service" \
	"$root/etc/systemd/system/dev-virtio\x2dports-org.qemu.guest_agent.0.device.wants/kvm-manager-agent.service" \
	"$root/etc/udev/rules.d/60-kvm-manager-agent.rules" \
	"$root/etc/init.d/kvm-manager-agent" \
	"$root/etc/logrotate.d/kvm-manager-agent"; do
	if [ -e "$file" ] || [ -L "$file" ]; then
		rm -f "$file"
		printf "removed %s\n" "$file"
	fi
done
for dir in "$root/etc/systemd/system/kvm-manager-agent.service.d" \
	"$root/etc/systemd/system/dev-virtio\x2dports-org.kvmmanager.agent.0.device.wants" \
	"$root/etc/systemd/system/dev-virtio\x2dports-org.qemu.guest_agent.0.device.wants"; do
	rmdir "$dir" 2>/dev/null || true
done
if [ -z "$root" ] && [ -d /run/systemd/system ]; then
	systemctl daemon-reload || true
	udevadm control --reload-rules || true
fi

if [ "$purge" = 1 ]; then
	for dir in "$root/etc/kvm-manager-agent" "$root/var/lib/kvm-manager-agent" "$root/var/log/kvm-manager-agent"; do
		if [ -e "$dir" ]; then
			rm -rf "$dir"
			echo "removed $dir"
		fi
	done
elif [ -e "$root/etc/kvm-manager-agent/config.toml" ]; then
	echo "kept $root/etc/kvm-manager-agent/config.toml and the state (--purge removes them)"
fi
