#!/bin/bash
# WatchMe サーバー初期設定 / 設定反映スクリプト (何度実行しても安全)
# リポジトリ内の Nginx / systemd 設定を OS の所定の場所にリンクし、サービスを有効化する。
set -e
REPO_DIR="$(cd "$(dirname "$0")" && pwd)"

echo "🔗 Nginx 設定をリンク中..."
for site in "$REPO_DIR"/sites-available/*; do
    name=$(basename "$site")
    sudo ln -sf "$site" "/etc/nginx/sites-available/$name"
    sudo ln -sf "/etc/nginx/sites-available/$name" "/etc/nginx/sites-enabled/$name"
done
sudo rm -f /etc/nginx/sites-enabled/default

echo "🔗 systemd サービスをリンク中..."
for unit in "$REPO_DIR"/systemd/*.service; do
    sudo ln -sf "$unit" "/etc/systemd/system/$(basename "$unit")"
done
sudo systemctl daemon-reload

echo "🚀 サービスを有効化・起動中..."
sudo systemctl enable --now watchme-infrastructure.service
for unit in "$REPO_DIR"/systemd/*.service; do
    name=$(basename "$unit")
    [ "$name" = "watchme-infrastructure.service" ] && continue
    sudo systemctl enable "$name"
    sudo systemctl restart "$name"
done

echo "🧪 Nginx 設定をテスト中..."
sudo nginx -t
sudo systemctl reload nginx
echo "✅ 完了"
