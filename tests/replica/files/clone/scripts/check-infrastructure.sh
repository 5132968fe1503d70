#!/bin/bash
# watchme-network のヘルスチェック (cron: */5 * * * *)
NETWORK=watchme-network

if ! docker network inspect "$NETWORK" >/dev/null 2>&1; then
    echo "$(date '+%F %T') ❌ $NETWORK が存在しません"
    exit 1
fi
connected=$(docker network inspect "$NETWORK" -f '{{range .Containers}}{{.Name}} {{end}}')
count=$(echo "$connected" | wc -w)
echo "$(date '+%F %T') ✅ $NETWORK: ${count} コンテナ接続中: $connected"
exit 0
