#!/usr/bin/env python3
"""watchme-network 監視ツール: 必須コンテナの接続を確認し、--fix で再接続する。"""
import json
import subprocess
import sys

NETWORK = "watchme-network"
REQUIRED = [
    "watchme-scheduler-prod", "api-transcriber", "watchme-api-manager-prod",
    "opensmile-aggregator", "watchme-vault-api", "api_gen_prompt_mood_chart",
    "api-gpt-v1", "watchme-web-prod", "vibe-transcriber-v2", "api_sed_v1-sed_api-1",
    "opensmile-api", "watchme-admin", "api-sed-aggregator",
]


def connected():
    out = subprocess.run(["docker", "network", "inspect", NETWORK, "-f",
                          "{{range .Containers}}{{.Name}}\n{{end}}"],
                         capture_output=True, text=True)
    return set(out.stdout.split()) if out.returncode == 0 else None


def main():
    names = connected()
    if names is None:
        print(f"❌ {NETWORK} not found")
        return 1
    missing = [c for c in REQUIRED if c not in names]
    if "--fix" in sys.argv:
        for c in missing:
            subprocess.run(["docker", "network", "connect", NETWORK, c])
    if "--json" in sys.argv:
        print(json.dumps({"network": NETWORK, "connected": sorted(names), "missing": missing}))
    else:
        for c in REQUIRED:
            print(("✅ " if c not in missing else "❌ ") + c)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
