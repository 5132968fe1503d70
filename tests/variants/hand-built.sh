# Turns a fresh test host into a server set up by hand, the way issue 15 describes, before
# the first deploy (run as root inside the host by tests/test_bootstrap_variants.py):
#   engine   Docker's own packages: `docker-ce` + `containerd.io` records (dummies built here
#            with dpkg-deb, with the real packages' Provides/Conflicts) around a working
#            engine (docker.io's files, its package records gone);
#   compose  a standalone /usr/local/bin/docker-compose (v1's code moved under /usr/local),
#            no compose package;
#   nginx    nginx.org's layout: no sites-available/ or sites-enabled/, conf.d/*.conf only;
#   certbot  from a snap: /snap/bin/certbot (a stub: snaps do not run in a container);
#   ECR      amazon-ecr-credential-helper pinned out of apt, as in a release without it.
# busybox-static is there for the test's running container (made at test time: an engine's
# data directory does not survive `docker commit` onto overlayfs).
set -eu
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends docker.io docker-compose nginx busybox-static \
  >/dev/null

# -- engine --------------------------------------------------------------------------------
systemctl stop docker.socket docker.service containerd.service
dpkg -L docker.io containerd runc | while read -r f; do
  if [ -f "$f" ] || [ -L "$f" ]; then printf '%s\n' "$f"; fi
done > /root/engine.files
tar -cf /root/engine.tar --no-recursion -T /root/engine.files
dpkg --purge --force-depends docker.io containerd runc >/dev/null

dummy() {  # dummy NAME VERSION "extra control lines"
  d=$(mktemp -d)
  mkdir "$d/DEBIAN"
  printf 'Package: %s\nVersion: %s\nArchitecture: all\nMaintainer: watchme tests <t@example.invalid>\n%bDescription: dummy %s (watchme variant test)\n' \
    "$1" "$2" "$3" "$1" > "$d/DEBIAN/control"
  dpkg-deb --build "$d" "/root/$1.deb" >/dev/null
  rm -rf "$d"
}
dummy containerd.io 1.7.22-1 \
  'Provides: containerd, runc\nConflicts: containerd, runc\nReplaces: containerd, runc\n'
dummy docker-ce 5:27.3.1-1~debian.12~bookworm \
  'Depends: containerd.io (>= 1.6.24)\nConflicts: docker.io, docker-engine\nReplaces: docker-engine\n'
dpkg -i /root/containerd.io.deb /root/docker-ce.deb >/dev/null
tar -xf /root/engine.tar -C /
systemctl daemon-reload
systemctl enable --now containerd.service docker.service >/dev/null 2>&1
getent group docker >/dev/null || groupadd --system docker

# -- compose -------------------------------------------------------------------------------
py=$(python3 -c 'import sys; print(f"python{sys.version_info[0]}.{sys.version_info[1]}")')
mkdir -p "/usr/local/lib/$py/dist-packages"
cp -a /usr/lib/python3/dist-packages/compose "/usr/local/lib/$py/dist-packages/"
printf '#!/usr/bin/python3\nimport sys\nfrom compose.cli.main import main\nsys.exit(main())\n' \
  > /usr/local/bin/docker-compose
chmod 755 /usr/local/bin/docker-compose
dpkg --purge docker-compose >/dev/null

# -- nginx ---------------------------------------------------------------------------------
rm -rf /etc/nginx/sites-enabled /etc/nginx/sites-available
sed -i '/include \/etc\/nginx\/sites-enabled\//d' /etc/nginx/nginx.conf
nginx -t 2>/dev/null
systemctl reload nginx

# -- certbot, ECR helper ---------------------------------------------------------------------
mkdir -p /snap/bin
printf '#!/bin/sh\necho "certbot 2.11.0"\n' > /snap/bin/certbot
chmod 755 /snap/bin/certbot
printf 'Package: amazon-ecr-credential-helper\nPin: release *\nPin-Priority: -1\n' \
  > /etc/apt/preferences.d/no-ecr-helper
