#!/usr/bin/env bash
# Installs the Debian tools the tests drive, when they are missing and we are root.
# snmp (snmpget/snmpwalk), snmptrapd, snmpd (the yardstick of the SNMP tests), smitools (smilint),
# golang-go (go tool pprof),
# prometheus (promtool), wrk, chromium and chromium-driver (chromedriver: the dashboard's browser tests).
# Services these packages ship are not started (policy-rc.d).
set -euo pipefail
declare -A need=([snmpget]=snmp [snmptrapd]=snmptrapd [snmpd]=snmpd [smilint]=smitools [go]=golang-go
                 [promtool]=prometheus [wrk]=wrk [chromium]=chromium [chromedriver]=chromium-driver)
missing=()
for cmd in "${!need[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || missing+=("${need[$cmd]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "system-deps: missing ${missing[*]}; install them (Debian: apt-get install ${missing[*]})" >&2
  exit 0
fi
echo "system-deps: installing ${missing[*]}"
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"; created_policy=1; fi
trap '[ $created_policy = 1 ] && rm -f "$policy"' EXIT
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null
apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
