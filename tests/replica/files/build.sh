#!/bin/bash
# Runs as root inside a fresh test host: turns it into the server the seed describes, as the
# operator made it by hand (packages, certbot's certificate layout, the git clone linked
# into /etc by setup_server.sh, services started by their units, the crontab line).
# $1: the staging directory (rootfs/ to copy over /, clone/ the repository's files).
set -euo pipefail
SRC=$1
export DEBIAN_FRONTEND=noninteractive

apt-get update -q >/dev/null
apt-get install -y -q --no-install-recommends \
    nginx docker.io docker-compose git cron openssl busybox-static curl ca-certificates \
    >/var/log/replica-apt.log
usermod -aG docker ubuntu
systemctl enable --now docker cron nginx >/dev/null 2>&1

# --- images: busybox from Debian's busybox-static, imported (no registry is reachable) ---
d=$(mktemp -d)
mkdir -p "$d/bin" "$d/www"
cp /bin/busybox "$d/bin/busybox"
tar -C "$d" -c . | docker import - watchme-network-holder:local >/dev/null
rm -rf "$d"
while read -r image; do
    docker tag watchme-network-holder:local "$image"
done < "$SRC/images"

# --- certbot's layout, self-signed (live/ links into archive/) ---
live=/etc/letsencrypt/live/api.hey-watch.me
archive=/etc/letsencrypt/archive/api.hey-watch.me
mkdir -p "$live" "$archive"
openssl req -x509 -newkey rsa:2048 -nodes -days 90 -subj /CN=api.hey-watch.me \
    -addext subjectAltName=DNS:api.hey-watch.me \
    -keyout "$archive/privkey1.pem" -out "$archive/cert1.pem" 2>/dev/null
cp "$archive/cert1.pem" "$archive/chain1.pem"
cp "$archive/cert1.pem" "$archive/fullchain1.pem"
chmod 600 "$archive/privkey1.pem"
for f in cert chain fullchain privkey; do
    ln -sfn "../../archive/api.hey-watch.me/${f}1.pem" "$live/$f.pem"
done

# --- the operator's files outside the clone (compose files, certbot's options, status page) ---
cp -a "$SRC/rootfs/." /
chown -R ubuntu:ubuntu /home/ubuntu
systemctl daemon-reload
systemctl enable --now status-page.service >/dev/null 2>&1

# --- the repository: an "origin" (GitHub stand-in) and the operator's clone ---
origin=/srv/git/watchme-server-configs.git
git init -q --bare -b main "$origin"
chown -R ubuntu:ubuntu /srv/git
work=$(mktemp -d) && cp -a "$SRC/clone/." "$work/" && chown -R ubuntu:ubuntu "$work"
sudo -u ubuntu -H sh -ec "
  cd '$work'
  git init -q -b main
  git add -A
  git -c user.name='WatchMe Ops' -c user.email=ops@hey-watch.me commit -q -m 'Nginx, systemd and network infrastructure for the WatchMe API server'
  git remote add origin '$origin'
  git push -q origin main
  cd /home/ubuntu
  git clone -q '$origin' watchme-server-configs
"
rm -rf "$work"

# --- the seed's setup: ./setup_server.sh as ubuntu (links into /etc, enables, starts) ---
sudo -u ubuntu -H sh -c 'cd /home/ubuntu/watchme-server-configs && ./setup_server.sh' \
    >/var/log/replica-setup.log 2>&1

# --- the seed's recommended cron job ---
echo '*/5 * * * * /home/ubuntu/watchme-server-configs/scripts/check-infrastructure.sh' \
    | crontab -u ubuntu -
