"""The local test hosts (inventory group `testhost`): what differs from all.py there."""

# No image registry is reachable from a test host: the services' images are built locally.
compose_pull = False
# A test host has no certbot certificate: the deploy makes a self-signed one.
tls_self_signed = True
