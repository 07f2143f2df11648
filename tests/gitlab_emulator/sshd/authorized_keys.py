"""AuthorizedKeysCommand: gitlab-shell's `gitlab-shell-authorized-keys-check git %u %k`. It asks
GitLab for the key (GET /internal/authorized_keys?key=) and prints the authorized_keys line with
gitlab-shell's forced command `key-<id>` (gitlab-shell cmd/gitlab-shell-authorized-keys-check)."""

import sys

sys.path.insert(0, "/opt/standin")
from internal_api import call  # noqa: E402

user, key = sys.argv[1], sys.argv[2]
if user != "git":
    sys.exit(0)
status, found = call("GET", "authorized_keys", {"key": key})
if status == 200 and found.get("id"):
    print(f'command="/usr/bin/python3 /opt/standin/gitlab_shell.py key-{found["id"]}",'
          f'no-port-forwarding,no-X11-forwarding,no-agent-forwarding,no-pty {found["key"]}')
