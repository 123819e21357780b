#!/bin/sh
# Test the Bulkhead .deb on this machine, as root (CI runs it on a fresh Debian 12):
#
#   packaging/test-deb.sh [PATH.deb]     without a path, packaging/build-deb.sh builds one
#
# lintian (errors fail), package contents and conffiles, dpkg -i, the installed CLI,
# man pages, desktop entry and icons, reinstall over itself keeping a local config edit,
# remove (config stays), purge (config gone), and no stray files left behind.
# Installs lintian, desktop-file-utils and man-db from apt if missing.
# Last line: "N passed, N failed"; exit status 1 if anything failed.
set -u

PKG=bulkhead
pass=0
fail=0
ok() { pass=$((pass + 1)); echo "PASS: $1"; }
bad() { fail=$((fail + 1)); echo "FAIL: $1"; }
# check DESCRIPTION COMMAND...: passes when COMMAND exits 0.
check() {
    what=$1
    shift
    if "$@"; then ok "$what"; else bad "$what"; fi
}
finish() {
    echo "$pass passed, $fail failed"
    [ "$fail" -eq 0 ]
    exit $?
}

if [ "$(id -u)" -ne 0 ]; then
    echo "test-deb.sh: must run as root (it installs and purges the package)" >&2
    exit 2
fi

here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if [ $# -ge 1 ]; then
    deb=$(readlink -f "$1")
else
    "$here/build-deb.sh" | tee "$work/build.log" || { bad "build-deb.sh builds the package"; finish; }
    deb=$(tail -n 1 "$work/build.log")
fi
[ -f "$deb" ] || { bad "package file exists: $deb"; finish; }
ok "package file exists: $deb"
case "$(basename "$deb")" in
    ${PKG}_*_amd64.deb) ok "file is named ${PKG}_<version>_amd64.deb" ;;
    *) bad "file is named ${PKG}_<version>_amd64.deb (got $(basename "$deb"))" ;;
esac

export DEBIAN_FRONTEND=noninteractive
# apt_install LOG PACKAGE...: a fresh container has no package lists yet, so on failure
# fetch them once and try again.
apt_install() {
    log=$1
    shift
    apt-get install -y --no-install-recommends "$@" >"$log" 2>&1 ||
        { apt-get update -qq >>"$log" 2>&1 && apt-get install -y --no-install-recommends "$@" >>"$log" 2>&1; }
}
missing=""
command -v lintian >/dev/null || missing="$missing lintian"
command -v desktop-file-validate >/dev/null || missing="$missing desktop-file-utils"
command -v man >/dev/null || missing="$missing man-db"
if [ -n "$missing" ]; then
    # shellcheck disable=SC2086 # word splitting intended: one package per word
    apt_install "$work/apt-tools.log" $missing ||
        { cat "$work/apt-tools.log"; bad "install test tools:$missing"; finish; }
fi

# --- the package file -------------------------------------------------------------
dpkg-deb -c "$deb" | awk '{print $NF}' | sed 's|^\./|/|' >"$work/contents"
for path in \
    /usr/bin/bulkhead /usr/bin/bulkhead-vmm /usr/bin/bulkhead-netrelay /usr/bin/bulkhead-agent \
    /etc/bulkhead/partitions.toml \
    /usr/share/bulkhead/templates/debian-12.toml \
    /usr/share/applications/bulkhead.desktop \
    /usr/share/icons/hicolor/scalable/apps/bulkhead.svg \
    /usr/share/man/man1/bulkhead.1.gz /usr/share/man/man1/bulkhead-vmm.1.gz \
    /usr/share/doc/bulkhead/copyright /usr/share/doc/bulkhead/changelog.Debian.gz; do
    check "package contains $path" grep -qx "$path" "$work/contents"
done
for size in 16 22 24 32 48 64 128 256; do
    check "package contains the ${size}px icon" \
        grep -qx "/usr/share/icons/hicolor/${size}x${size}/apps/bulkhead.png" "$work/contents"
done
check "package contains policy files under /etc/bulkhead/policy.d/" \
    grep -q '^/etc/bulkhead/policy\.d/.*\.policy$' "$work/contents"

dpkg-deb -e "$deb" "$work/control"
# Every file under /etc must be a conffile, or an upgrade would overwrite local edits.
grep '^/etc/.*[^/]$' "$work/contents" | sort >"$work/etc-files"
sort "$work/control/conffiles" 2>/dev/null >"$work/conffiles"
check "every file under /etc/bulkhead is a conffile" cmp -s "$work/etc-files" "$work/conffiles"
check "maintainer scripts build no guest image and download nothing" \
    sh -c "! grep -Eqs 'bulkhead +image|apt-get|dpkg-deb|wget|curl' '$work'/control/*inst '$work'/control/*rm"

depends=$(dpkg-deb -f "$deb" Depends)
for lib in libx11-6 libxkbcommon0 libwayland-client0 libegl1 apt mmdebstrap squashfs-tools-ng uidmap; do
    check "Depends declares $lib" sh -c "printf '%s' '$depends' | grep -qw '$lib'"
done
check "Recommends declares libvulkan1 and passt" \
    sh -c "dpkg-deb -f '$deb' Recommends | grep -q libvulkan1 && dpkg-deb -f '$deb' Recommends | grep -qw passt"

mkdir "$work/x"
dpkg-deb -x "$deb" "$work/x"
for static in bulkhead-vmm bulkhead-netrelay bulkhead-agent; do
    check "$static in the package is statically linked" \
        sh -c "! ldd '$work/x/usr/bin/$static' 2>&1 | grep -q '=>'"
done

# lintian warns that it runs as root, harmlessly; --fail-on error makes errors fatal.
lintian --fail-on error --tag-display-limit 0 "$deb" >"$work/lintian.log" 2>&1
lintian_rc=$?
sed 's/^/  lintian: /' "$work/lintian.log"
check "lintian reports no errors" [ "$lintian_rc" -eq 0 ]

# --- install, use, reinstall, remove, purge ---------------------------------------
if dpkg -s "$PKG" >/dev/null 2>&1 || dpkg -l "$PKG" 2>/dev/null | grep -q '^rc'; then
    echo "note: purging the $PKG already on this machine first"
    dpkg -P "$PKG" >/dev/null
fi

# What dpkg -i cannot fetch by itself: the declared dependencies, from apt.
deps=$(printf '%s' "$depends" | tr ',' '\n' | sed 's/|.*//; s/(.*)//; s/^ *//; s/ *$//' | grep -v '^$' | tr '\n' ' ')
# shellcheck disable=SC2086 # one package per word
apt_install "$work/apt-deps.log" $deps ||
    { cat "$work/apt-deps.log"; bad "install the declared dependencies with apt"; finish; }

# Caches that triggers of other packages rebuild whenever any package adds icons, desktop
# entries or man pages; they belong to those packages, not to bulkhead.
snapshot() {
    find /etc /usr /opt /var/lib -xdev \
        -path /var/lib/dpkg -prune -o -path /var/lib/apt -prune -o \
        -path /var/lib/lintian -prune -o -path /var/lib/ucf -prune -o \
        -name icon-theme.cache -prune -o -name mimeinfo.cache -prune -o \
        -path /var/lib/man-db -prune -o -print | sort
}
snapshot >"$work/before"

dpkg -i "$deb" >"$work/install.log" 2>&1
install_rc=$?
cat "$work/install.log"
check "dpkg -i installs the package" [ "$install_rc" -eq 0 ]
check "the package is configured" sh -c "dpkg -s $PKG | grep -q '^Status: install ok installed'"
check "every path dpkg -L lists for the package exists" \
    sh -c "dpkg -L $PKG | while read -r path; do [ -e \"\$path\" ] || { echo \"  missing: \$path\"; exit 1; }; done"
check "first install explains the kvm group" grep -q 'usermod -aG kvm YOUR_USER' "$work/install.log"

version=$(dpkg-deb -f "$deb" Version)
upstream=${version%-*}
out=$(bulkhead --version 2>&1)
check "bulkhead --version prints the packaged version ($out)" \
    sh -c "printf '%s' '$out' | grep -qx 'bulkhead $upstream'"
bulkhead policy check /etc/bulkhead >"$work/policy.log" 2>&1
policy_rc=$?
sed 's/^/  policy: /' "$work/policy.log"
check "bulkhead policy check /etc/bulkhead accepts the default policy" [ "$policy_rc" -eq 0 ]

for page in bulkhead bulkhead-vmm bulkhead-run bulkhead-policy; do
    check "man $page renders" sh -c "MANPAGER=cat MANWIDTH=80 man $page 2>/dev/null | grep -q NAME"
done
warnings=$(LC_ALL=C.UTF-8 MANWIDTH=80 man --warnings -l -Z /usr/share/man/man1/bulkhead*.1.gz 2>&1 >/dev/null)
check "man pages render without groff warnings" [ -z "$warnings" ]
[ -z "$warnings" ] || printf '%s\n' "$warnings" | sed 's/^/  groff: /'

check "desktop-file-validate accepts the installed desktop entry" \
    desktop-file-validate /usr/share/applications/bulkhead.desktop
check "the desktop entry runs bulkhead with the bulkhead icon" \
    sh -c "grep -qx 'Exec=bulkhead' /usr/share/applications/bulkhead.desktop && grep -qx 'Icon=bulkhead' /usr/share/applications/bulkhead.desktop"
for size in 16 22 24 32 48 64 128 256; do
    icon=/usr/share/icons/hicolor/${size}x${size}/apps/bulkhead.png
    # PNG width and height are big-endian u32s at bytes 16..24.
    dims=$(od --endian=big -An -tu4 -j16 -N8 "$icon" 2>/dev/null | tr -s ' ' | sed 's/^ //')
    check "installed ${size}px icon is a ${size}x${size} PNG" [ "$dims" = "$size $size" ]
done

# Upgrade over itself: a local edit of a conffile survives, and the package stays sane.
echo "# local edit by test-deb.sh" >>/etc/bulkhead/partitions.toml
dpkg -i "$deb" >"$work/reinstall.log" 2>&1
reinstall_rc=$?
check "dpkg -i over the installed package succeeds" [ "$reinstall_rc" -eq 0 ]
check "a local edit of /etc/bulkhead/partitions.toml survives the upgrade" \
    grep -q 'local edit by test-deb.sh' /etc/bulkhead/partitions.toml
check "the reinstall does not print the first-install note again" \
    sh -c "! grep -q 'usermod -aG kvm YOUR_USER' '$work/reinstall.log'"
check "bulkhead still runs after the upgrade" sh -c "bulkhead --version >/dev/null"

dpkg -r "$PKG" >/dev/null 2>&1
check "dpkg -r removes the package" sh -c "dpkg -l $PKG | grep -q '^rc'"
check "remove deletes the binaries" sh -c "[ ! -e /usr/bin/bulkhead ] && [ ! -e /usr/bin/bulkhead-vmm ]"
check "remove keeps the configuration in /etc/bulkhead" [ -f /etc/bulkhead/partitions.toml ]

# An admin-made file beside the conffiles: purge is the moment to remove it too.
echo "# made by the admin" >/etc/bulkhead/local-note.toml
dpkg -P "$PKG" >/dev/null 2>&1
check "dpkg -P purges the package" sh -c "! dpkg -s $PKG >/dev/null 2>&1"
check "purge removes /etc/bulkhead" [ ! -e /etc/bulkhead ]

snapshot >"$work/after"
if cmp -s "$work/before" "$work/after"; then
    ok "install, upgrade, remove and purge leave no stray files"
else
    bad "install, upgrade, remove and purge leave no stray files"
    diff "$work/before" "$work/after" | sed 's/^/  /'
fi

finish
