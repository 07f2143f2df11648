"""gitlab-shell for git over SSH: the forced command `gitlab-shell key-<id>`. It asks GitLab
whether that key may run the requested git command on the project (POST /internal/allowed), runs
it with git-shell on the repository GitLab names, then reports the push (POST /internal/post_receive)."""

import os
import re
import subprocess
import sys

sys.path.insert(0, "/opt/standin")
from internal_api import call  # noqa: E402

key_id = sys.argv[1].removeprefix("key-")
original = os.environ.get("SSH_ORIGINAL_COMMAND", "")
m = re.fullmatch(r"(git-upload-pack|git-receive-pack|git-upload-archive) '?/?(.+?)'?", original)
if not m:
    # gitlab-shell's answer to an interactive login or an unknown command
    print("Welcome to GitLab, this stand-in only serves git commands.", file=sys.stderr)
    sys.exit(1)
action, project = m.group(1), m.group(2)
status, allowed = call("POST", "allowed", {"key_id": key_id, "action": action, "project": project,
                                          "protocol": "ssh", "changes": "_any"})
if status != 200 or not allowed.get("status"):
    print(f"remote: ERROR: {allowed.get('message', 'access denied')}", file=sys.stderr)
    sys.exit(1)
repo = allowed["repository_path"]
rc = subprocess.run(["git-shell", "-c", f"{action} '{repo}'"]).returncode
if rc == 0 and action == "git-receive-pack":
    call("POST", "post_receive", {"gl_repository": allowed["gl_repository"], "identifier": f"key-{key_id}"})
sys.exit(rc)
