#!/bin/sh
# Put a candidate Nginx site in place without ever leaving a broken one behind.
#
#   nginx-safe-apply CANDIDATE LIVE BACKUP_DIR KEEP HOST ROUTE...
#   ROUTE is NAME|PATH|EXPECTED_STATUS, probed as http://127.0.0.1PATH with Host: HOST.
#
# 1. probe every route through the live Nginx;  2. back LIVE up as
# BACKUP_DIR/LIVE.backup.YYYYmmdd_HHMMSS (the seed's form);  3. put CANDIDATE in place;
# 4. `nginx -t` (the full config): on failure restore, do not reload, print nginx's error;
# 5. reload and wait for the old workers to go;  6. probe again: a route that answered as
# expected before and does not now was broken by this change, so restore and reload.
# Routes that were already failing are warnings. Keeps the newest KEEP backups.
# Exit: 0 applied, 1 nginx -t failed (nothing changed), 2 a route broke (rolled back).
set -u
cand=$1 live=$2 bdir=$3 keep=$4 vhost=$5
shift 5

probe() {
    curl -s -o /dev/null -m 5 -w '%{http_code}' -H "Host: $vhost" "http://127.0.0.1$1" 2>/dev/null
}
probe_all() {  # prints NAME PATH EXPECTED CODE per route
    for r in "$@"; do
        name=${r%%|*}; rest=${r#*|}; path=${rest%|*}; want=${rest##*|}
        echo "$name $path $want $(probe "$path" || true)"
    done
}
reload_nginx() {  # reload and wait until the old workers have exited
    old=$(pgrep -f '^nginx: worker process' | tr '\n' ' ')
    systemctl reload nginx || return 1
    for _ in $(seq 50); do
        still=0
        for p in $old; do [ -d "/proc/$p" ] && still=1; done
        [ $still = 0 ] && return 0
        sleep 0.1
    done
}

before=$(probe_all "$@")
mkdir -p "$bdir"
backup="$bdir/$(basename "$live").backup.$(date +%Y%m%d_%H%M%S)"
cp -p "$live" "$backup"
restore() { cp -p "$backup" "$live"; rm -f "$backup" "$cand"; }

cat "$cand" > "$live.tmp" && mv -f "$live.tmp" "$live"
if ! out=$(nginx -t 2>&1); then
    restore
    echo "nginx -t failed; previous site restored, Nginx not reloaded:"
    echo "$out" | grep -E '\[(emerg|alert|crit|error)\]'
    exit 1
fi
reload_nginx

after=$(probe_all "$@")
echo "$after" | while read -r name path want code; do
    was=$(echo "$before" | awk -v n="$name" '$1 == n {print $4}')
    if [ "$code" = "$want" ]; then
        echo "probe ok: $name $path answered $code"
    elif [ "$was" = "$want" ]; then
        echo "probe BROKEN: $name $path expected $want, got $code (was $was before this change)"
    else
        echo "probe warning: $name $path expected $want, got $code (already failing before: $was)"
    fi
done > "$cand.probes"
cat "$cand.probes"
if grep -q '^probe BROKEN' "$cand.probes"; then
    rm -f "$cand.probes"
    restore
    nginx -t >/dev/null 2>&1 && reload_nginx
    echo "rolled back to the previous site; Nginx reloaded with it"
    exit 2
fi
rm -f "$cand.probes" "$cand"
# Keep the newest $keep backups of this site.
ls -1t "$bdir/$(basename "$live").backup."* 2>/dev/null | tail -n +"$((keep + 1))" | xargs -r rm -f
exit 0
