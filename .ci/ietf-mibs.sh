#!/usr/bin/env bash
# The IETF base MIB modules (SNMPv2-SMI/TC/CONF/MIB) that the SNMP tests need to translate names.
# Debian main ships none (libsmi2-common is empty, snmp-mibs-downloader needs the internet); the npm
# registry's `net-snmp` package carries them. Prints the directory that holds them.
set -euo pipefail
dest="${1:-.cache/ietf-mibs}"
for dir in /usr/share/snmp/mibs/ietf /usr/share/mibs/ietf /var/lib/mibs/ietf "$dest"; do
  if [ -f "$dir/SNMPv2-SMI.txt" ] || [ -f "$dir/SNMPv2-SMI" ]; then echo "$dir"; exit 0; fi
done
if ! command -v npm >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends npm >/dev/null
  else
    echo "ietf-mibs: npm is missing; install it or put SNMPv2-SMI/TC/CONF/MIB in $dest" >&2; exit 1
  fi
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent net-snmp@3 >/dev/null && tar xzf net-snmp-*.tgz)
mkdir -p "$dest"
for module in SNMPv2-SMI SNMPv2-TC SNMPv2-CONF SNMPv2-MIB; do
  cp "$work/package/lib/mibs/$module.mib" "$dest/$module.txt"
done
echo "$dest"
