"""The production server (inventory group `production`, WATCHME_HOSTS): what must hold there
whatever all.py's defaults become."""

# Production serves HTTPS with certbot's certificate (the seed's users call https://...).
http_only = False
# Never replace the real certificate by a self-signed one.
tls_self_signed = False
