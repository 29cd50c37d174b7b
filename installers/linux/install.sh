#!/bin/sh
# Installs kvm-manager-agent from this unpacked tarball. Idempotent: run it again to
# upgrade or repair; an existing config.toml is kept.
#
# Usage: ./install.sh [--prefix DIR] [--root DIR] [--init auto|systemd|sysv] [--no-start]
#   --prefix DIR  the binary goes to DIR/bin (default /usr/local)
#   --root DIR    install into another root (an image being built); nothing is started
#   --init        systemd unit + udev rules, or a plain /etc/init.d script
#                 (default auto: systemd when present)
#   --no-start    install only
set -eu

usage() { sed -n '5,10p' "$0" | sed 's/^# \{0,1\}//'; }
fail() { echo "install.sh: $*" >&2; exit 2; }

here=$(cd "$(dirname "$0")" && pwd)
prefix=/usr/local
root=
init=auto
start=1
while [ $# -gt 0 ]; do
	case "$1" in
		--prefix) [ $# -ge 2 ] || fail "--prefix needs a directory"; prefix=$2; shift 2 ;;
		--prefix=*) prefix=${1#*=}; shift ;;
		--root) [ $# -ge 2 ] || fail "--root needs a directory"; root=$2; shift 2 ;;
		--root=*) root=${1#*=}; shift ;;
		--init) [ $# -ge 2 ] || fail "--init needs auto, systemd or sysv"; init=$2; shift 2 ;;
		--init=*) init=${1#*=}; shift ;;
		--no-start) start=0; shift ;;
		-h|--help) usage; exit 0 ;;
		*) usage >&2; fail "unknown option '$1'" ;;
	esac
done
case "$prefix" in /*) ;; *) fail "--prefix must be an absolute path (got '$prefix')" ;; esac
case "$init" in auto|systemd|sysv) ;; *) fail "--init must be auto, systemd or sysv (got '$init')" ;; esac
root=${root%/}
[ -z "$root" ] || [ -d "$root" ] || fail "--root $root is not a directory"
[ -z "$root" ] || start=0

if [ "$init" = auto ]; then
	if [ -d "$root/run/systemd/system" ] || [ -x "$root/lib/systemd/systemd" ] || [ -x "$root/usr/lib/systemd/systemd" ]; then
		init=systemd
	else
		init=sysv
	fi
fi

bin=$prefix/bin/kvm-manager-agent

# Copy via a temp file and rename: a running agent keeps its old binary, no ETXTBSY.
put() { # SRC DEST MODE
	mkdir -p "$(dirname "$2")"
	cp "$1" "$2.new.$$"
	chmod "$3" "$2.new.$$"
	mv -f "$2.new.$$" "$2"
}
# The templates name /usr/bin/kvm-manager-agent (the packages' path).
put_with_bin() { # SRC DEST MODE
	sed "s#/usr/bin/kvm-manager-agent#$bin#g" "$1" >"$1.$$"
	put "$1.$$" "$2" "$3"
	rm -f "$1.$$"
}

put "$here/kvm-manager-agent" "$root$bin" 0755
echo "installed $root$bin"

if [ -e "$root/etc/kvm-manager-agent/config.toml" ]; then
	echo "kept $root/etc/kvm-manager-agent/config.toml"
else
	put "$here/config.toml" "$root/etc/kvm-manager-agent/config.toml" 0644
	echo "installed $root/etc/kvm-manager-agent/config.toml"
fi
mkdir -p "$root/var/lib/kvm-manager-agent" "$root/var/log/kvm-manager-agent"
if [ -d "$root/etc/logrotate.d" ]; then
	put "$here/kvm-manager-agent.logrotate" "$root/etc/logrotate.d/kvm-manager-agent" 0644
	echo "installed $root/etc/logrotate.d/kvm-manager-agent"
fi

if [ "$init" = systemd ]; then
	units=$root/etc/systemd/system
	put_with_bin "$here/kvm-manager-agent.service" "$units/kvm-manager-agent.service" 0644
	put "$here/qga-port.conf" "$units/kvm-manager-agent.service.d/qga-port.conf" 0644
	put "$here/60-kvm-manager-agent.rules" "$root/etc/udev/rules.d/60-kvm-manager-agent.rules" 0644
	# Enabled as systemctl enable would: the ports' devices want the service.
	for device in 'dev-virtio\x2dports-org.kvmmanager.agent.0.device' 'dev-virtio\x2dports-org.qemu.guest_agent.0.device'; do
		mkdir -p "$units/$device.wants"
		ln -sfn ../kvm-manager-agent.service "$units/$device.wants/kvm-manager-agent.service"
	done
	echo "installed and enabled $units/kvm-manager-agent.service and its udev rule"
	if [ "$start" = 1 ] && [ -d /run/systemd/system ]; then
		systemctl daemon-reload
		udevadm control --reload-rules || true
		if [ -e /dev/virtio-ports/org.kvmmanager.agent.0 ] || [ -e /dev/virtio-ports/org.qemu.guest_agent.0 ]; then
			systemctl restart kvm-manager-agent.service
			echo "started kvm-manager-agent.service"
		else
			echo "no agent port in this VM yet: the service starts when one appears"
		fi
	fi
else
	put_with_bin "$here/kvm-manager-agent.init" "$root/etc/init.d/kvm-manager-agent" 0755
	echo "installed $root/etc/init.d/kvm-manager-agent"
	if [ "$start" = 1 ]; then
		if command -v update-rc.d >/dev/null 2>&1; then
			update-rc.d kvm-manager-agent defaults >/dev/null
		elif command -v chkconfig >/dev/null 2>&1; then
			chkconfig --add kvm-manager-agent
		elif command -v rc-update >/dev/null 2>&1; then
			rc-update add kvm-manager-agent default
		else
			echo "no update-rc.d, chkconfig or rc-update: run /etc/init.d/kvm-manager-agent start at boot"
		fi
		/etc/init.d/kvm-manager-agent restart
	fi
fi
