# The host profile (watchme/host_profile.py): everything the deploy must know about a host
# before it changes anything, in one round trip, as the login user (no sudo: this is how the
# deploy finds out whether sudo works). Prints key=value lines (watchme/kv.py).
#   $1  the swap file path
#
# It only reads: os-release, the user, sudo, memory and swap, and which software is there in
# which form (Docker engine, compose, Nginx and its layout, certbot, the ECR credential helper,
# every installed package), so the bootstrap never installs over what someone else installed.

# The system's own directories (and snap's), not the login user's PATH: the units and the
# deploy run these commands as root through systemd.
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/snap/bin
export PATH

. /etc/os-release 2>/dev/null
echo "id=$ID"
echo "like=$ID_LIKE"
echo "version=$VERSION_ID"
echo "pretty=$PRETTY_NAME"
echo "user=$(id -un)"
echo "groups=$(id -Gn)"
if [ "$(id -u)" = 0 ]; then echo sudo=root
elif sudo -n true 2>/dev/null; then echo sudo=ok
else echo sudo=no; fi
echo "virt=$(systemd-detect-virt --container 2>/dev/null || echo none)"
# (/proc and /sys read by the shell itself: an awk or a cat is ~3-5 ms of every no-op.)
while read -r k v _; do
  case "$k" in MemTotal:) echo "mem_kib=$v"; break ;; esac
done < /proc/meminfo
cg=""
for f in /sys/fs/cgroup/memory.max /sys/fs/cgroup/memory/memory.limit_in_bytes; do
  if [ -r "$f" ] && IFS= read -r cg < "$f"; then break; fi
done
echo "cgroup_mem=$cg"
# One line per active swap area: swap.<device or file>=<size KiB>
{ read -r _; while read -r dev _ size _; do echo "swap.$dev=$size"; done; } < /proc/swaps
echo "swap_file_bytes=$(stat -c %s "$1" 2>/dev/null || echo 0)"

# Commands, by absolute path where found (empty: none).
for c in docker dockerd docker-compose nginx certbot curl docker-credential-ecr-login; do
  echo "path.$c=$(command -v "$c" 2>/dev/null)"
done
# The compose v2 plugin answers `docker compose version` (the CLI alone, no daemon needed).
# Asked only when a plugin file is where the CLI looks for it (or Docker is the snap, which
# bundles it): the CLI is 37 MB, the largest process of a no-op deploy on a server with
# compose v1 (the seed's), and without the file it could only say "not a docker command".
if command -v docker >/dev/null 2>&1; then
  for d in "${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins" /usr/local/lib/docker/cli-plugins \
      /usr/local/libexec/docker/cli-plugins /usr/lib/docker/cli-plugins \
      /usr/libexec/docker/cli-plugins /snap/docker/current/usr/libexec/docker/cli-plugins; do
    if [ -e "$d/docker-compose" ] || [ -d /snap/docker ]; then
      echo "compose_plugin=$(docker compose version --short 2>/dev/null | head -n1)"
      break
    fi
  done
fi
[ -d /snap/docker ] && echo snap.docker=yes
getent group docker >/dev/null 2>&1 && echo docker_group=yes

# Nginx's layout: Debian's package includes sites-enabled/, nginx.org's only conf.d/*.conf.
# An `include` directive's first word after it (read splits on blanks, as nginx does).
if [ -r /etc/nginx/nginx.conf ]; then
  sites="" confd=""
  while read -r word path _; do
    [ "$word" = include ] || continue
    case "$path" in
      sites-enabled/*|/etc/nginx/sites-enabled/*) sites=yes ;;
      conf.d/\*.conf*|/etc/nginx/conf.d/\*.conf*) confd=yes ;;
    esac
  done < /etc/nginx/nginx.conf
  [ -z "$sites" ] || echo nginx.sites=yes
  [ -z "$confd" ] || echo nginx.confd=yes
fi

# The systemd units that run them: unit.<name>=present when a unit file of that name is in
# one of systemd's unit directories (the deploy asks only which exist; the shell's tests
# instead of `systemctl list-unit-files`, ~10 ms of every no-op).
for u in docker.service snap.docker.dockerd.service nginx.service; do
  for d in /etc/systemd/system /run/systemd/system /usr/local/lib/systemd/system \
      /lib/systemd/system /usr/lib/systemd/system; do
    if [ -e "$d/$u" ] || [ -L "$d/$u" ]; then echo "unit.$u=present"; break; fi
  done
done

# Every installed package and its version: pkg.<name>=<version>.
dpkg-query -W -f='${db:Status-Status} ${Package} ${Version}\n' 2>/dev/null \
  | awk '$1 == "installed" {print "pkg." $2 "=" $3}'
true
