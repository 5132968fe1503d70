#!/bin/sh
# Put a candidate Nginx site in place without ever leaving a broken one behind.
#
#   nginx-safe-apply apply CANDIDATE LIVE BACKUP_DIR KEEP STATE_DIR PROBE...
#   nginx-safe-apply reload          # nginx -t, then a checked reload (certbot's deploy hook)
#
# PROBE is NAME|URL|STATUS|REDIRECT: URL is requested on 127.0.0.1 (curl --resolve, so HTTPS
# gets SNI for the URL's host); it passes when it answers STATUS and, if REDIRECT is not empty,
# its Location starts with REDIRECT.
#
# 1. test the candidate BEFORE it is live: /etc/nginx is copied to a staging directory with
#    the candidate in place of LIVE and `nginx -t -c <stage>/nginx.conf` runs on it (a crash
#    after this point can never leave an untested file live);
# 2. probe every route through the live Nginx;  3. back LIVE (the resolved file) up as
#    BACKUP_DIR/<name>.backup.YYYYmmdd_HHMMSS (the seed's form): a failed backup stops here;
# 4. put the candidate in place (atomic rename);  5. reload, checked, and wait for the old
#    workers to go;  6. probe again: a route that passed before and fails now was broken by
#    this change, so restore the last known-good site (recorded after its probes passed)
#    and reload;  7. record the site as known-good and its sha256 as applied.
# Exit: 0 applied, 1 nginx -t failed (nothing changed), 2 a route broke (rolled back),
#       3 backup failed (nothing changed), 4 reload failed (rolled back).
set -u
PATH=/usr/sbin:/usr/bin:/sbin:/bin

reload_nginx() {  # checked reload; waits until the old workers have exited
    old=$(pgrep -f '^nginx: worker process' | tr '\n' ' ')
    systemctl reload nginx || return 1
    for _ in $(seq 50); do
        still=0
        for p in $old; do [ -d "/proc/$p" ] && still=1; done
        [ $still = 0 ] && return 0
        sleep 0.1
    done
    return 0
}

if [ "${1:-}" = reload ]; then
    if ! out=$(nginx -t 2>&1); then
        echo "nginx -t failed; Nginx not reloaded:"; echo "$out"; exit 1
    fi
    reload_nginx || { echo "systemctl reload nginx failed"; exit 4; }
    exit 0
fi
[ "${1:-}" = apply ] || { echo "usage: $0 apply|reload ..."; exit 64; }
cand=$2 live=$3 bdir=$4 keep=$5 sdir=$6
shift 6
good="$sdir/nginx-known-good.conf"
applied="$sdir/nginx-applied.sha256"

work=$(mktemp -d) || exit 1
trap 'rm -rf "$work"; rm -f "$cand"' EXIT
[ -s "$cand" ] || { echo "the candidate site is empty; nothing changed"; exit 1; }

# 1. Stage: a copy of /etc/nginx where every path resolving to LIVE is the candidate and
#    every absolute /etc/nginx/ reference points into the copy.
stage="$work/etc-nginx"
cp -a /etc/nginx "$stage" || exit 1
real_live=$(readlink -f "$live")
find "$stage" -type l | while read -r l; do
    if [ "$(readlink -f "$l")" = "$real_live" ]; then rm -f "$l" && cp "$cand" "$l"; fi
done
grep -rlF /etc/nginx/ "$stage" | while read -r f; do
    sed -i "s#/etc/nginx/#$stage/#g" "$f"
done
if ! out=$(nginx -t -c "$stage/nginx.conf" 2>&1); then
    echo "nginx -t failed on the staged candidate; nothing changed, Nginx not reloaded:"
    echo "$out" | grep -E '\[(emerg|alert|crit|error)\]' | sed "s#$stage/#/etc/nginx/#g"
    exit 1
fi

# 2. Probes through what Nginx runs now.
probe_all() {  # prints NAME ok|bad CODE URL per probe
    for r in "$@"; do
        name=${r%%|*}; rest=${r#*|}; url=${rest%%|*}; rest=${rest#*|}
        want=${rest%%|*}; redirect=${rest#*|}
        hp=${url#*://}; hp=${hp%%/*}; port=443
        case $url in http://*) port=80 ;; esac
        # -k: the probe checks routing, not trust (test hosts use a self-signed certificate).
        got=$(curl -sk -o /dev/null -m 5 -w '%{http_code} %{redirect_url}' \
              --resolve "$hp:$port:127.0.0.1" "$url" 2>/dev/null) || true
        code=${got%% *}; location=${got#* }
        ok=bad
        if [ "$code" = "$want" ]; then
            case $location in "$redirect"*) ok=ok ;; esac
        fi
        echo "$name $ok ${code:-000} $want $url"
    done
}
probe_all "$@" > "$work/before"

# 3. Backup of the resolved file; without it nothing changes.
mkdir -p "$bdir" "$sdir" || exit 3
backup="$bdir/$(basename "$live").backup.$(date +%Y%m%d_%H%M%S)"
if [ -e "$live" ] && ! cp -pL -- "$live" "$backup"; then
    echo "backup of $live to $backup failed; nothing changed"
    exit 3
fi
restore() {  # the last known-good site, else the backup; never an empty site
    src=$good
    [ -s "$src" ] || src=$backup
    if [ ! -s "$src" ]; then
        echo "no known-good site and no non-empty backup: refusing to restore an empty site"
        return 1
    fi
    cp -- "$src" "$live.tmp" && mv -f -- "$live.tmp" "$live" || return 1
    echo "restored $src"
    # A backup identical to what is live again adds nothing.
    if [ "$src" != "$backup" ] && cmp -s "$backup" "$live"; then rm -f -- "$backup"; fi
    [ "$src" = "$backup" ] && rm -f -- "$backup"
    return 0
}

# 4. In place (rename: Nginx never reads a half-written file).
cp -- "$cand" "$live.tmp" && mv -f -- "$live.tmp" "$live" || exit 1

# 5. Reload, checked.
if ! reload_nginx; then
    echo "systemctl reload nginx failed: $(systemctl is-active nginx)"
    restore && nginx -t >/dev/null 2>&1 && reload_nginx
    echo "rolled back to the last known-good site"
    exit 4
fi

# 6. Probes again.
probe_all "$@" > "$work/after"
broken=0
while read -r name ok code want url; do
    was=$(awk -v n="$name" '$1 == n {print $2 " " $3}' "$work/before")
    if [ "$ok" = ok ]; then
        echo "probe ok: $name $url answered $code"
    elif [ "${was%% *}" = ok ]; then
        echo "probe BROKEN: $name $url expected $want, got $code (was ${was#* } before this change)"
        broken=1
    else
        echo "probe warning: $name $url expected $want, got $code (already failing before: ${was#* })"
    fi
done < "$work/after"
if [ $broken = 1 ]; then
    restore && nginx -t >/dev/null 2>&1 && reload_nginx
    echo "rolled back to the last known-good site; Nginx reloaded with it"
    exit 2
fi

# 7. Known-good and applied, only now.
cp -- "$live" "$good.tmp" && mv -f -- "$good.tmp" "$good"
sha256sum < "$live" | cut -d' ' -f1 > "$applied.tmp" && mv -f -- "$applied.tmp" "$applied"
# Keep the newest $keep backups of this site.
ls -1t "$bdir/$(basename "$live").backup."* 2>/dev/null | tail -n +"$((keep + 1))" | xargs -r rm -f
exit 0
