"""The emulator's SSH keys API behaves as GitLab documents it (doc/api/user_keys.md), driven the way
the dicom_indexer's entrypoint drives it: curl with a multipart form and a private_token field."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import gitlab
import pytest
import requests


def _keygen(tmp: Path, name: str, *opts: str) -> str:
    subprocess.run(["ssh-keygen", "-q", "-N", "", "-f", str(tmp / name), *opts], check=True)
    return (tmp / f"{name}.pub").read_text().strip()


def _curl_add(url: str, token: str, title: str, key: str) -> tuple[int, dict]:
    out = subprocess.run(["curl", "-sS", "-w", "\n%{http_code}", "-X", "POST", "-F", f"private_token={token}",
                          "-F", f"title={title}", "-F", f"key={key}", f"{url}/api/v4/user/keys"],
                         capture_output=True, text=True, check=True).stdout
    body, _, code = out.rpartition("\n")
    return int(code), json.loads(body)


def test_user_keys_add_list_delete_and_errors(gitlab_emulator, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    gitlab_emulator.create_user("dicom_bot")
    token = gitlab_emulator.create_token("dicom_bot", ["api"])
    rsa, ed = _keygen(tmp_path, "rsa", "-t", "rsa"), _keygen(tmp_path, "ed", "-t", "ed25519")

    code, made = _curl_add(gitlab_emulator.url, token, "indexer-1", rsa)
    assert code == 201 and made["title"] == "indexer-1" and made["key"] == rsa and isinstance(made["id"], int)
    assert made["usage_type"] == "auth_and_signing"
    # The same key again: the fingerprint is unique across the instance.
    code, again = _curl_add(gitlab_emulator.url, token, "indexer-2", rsa)
    assert code == 400 and again == {"message": {"fingerprint_sha256": ["has already been taken"]}}
    code, bad = _curl_add(gitlab_emulator.url, token, "x", "ssh-rsa AAAAnotakey")
    assert code == 400 and bad["message"]["key"] == ["is invalid"]
    gitlab_emulator.forbidden_key_types = {"ssh-rsa"}  # Admin > Settings > visibility: RSA keys forbidden
    code, forbidden = _curl_add(gitlab_emulator.url, token, "t", rsa.replace("AAAA", "AAAA", 1))
    assert code == 400 and forbidden["message"]["key"] == ["type is forbidden. Must be ECDSA, or ED25519"]
    gitlab_emulator.forbidden_key_types = set()
    code, blank = _curl_add(gitlab_emulator.url, token, "", ed)
    assert code == 400 and blank["message"]["title"] == ["can't be blank"]
    missing = requests.post(f"{gitlab_emulator.url}/api/v4/user/keys", data={"title": "t"},
                            headers={"PRIVATE-TOKEN": token}, timeout=10)
    assert missing.status_code == 400 and missing.json() == {"error": "key is missing"}
    code, unauth = _curl_add(gitlab_emulator.url, "glpat-wrong", "t", ed)
    assert code == 401
    reader = gitlab_emulator.create_token("dicom_bot", ["read_api"])
    code, _ = _curl_add(gitlab_emulator.url, reader, "t", ed)
    assert code == 403

    gl = gitlab.Gitlab(gitlab_emulator.url, private_token=token)
    gl.auth()
    assert [k.title for k in gl.user.keys.list()] == ["indexer-1"]
    # Another user neither sees nor deletes it.
    gitlab_emulator.create_user("eve")
    eve = gitlab_emulator.create_token("eve", ["api"])
    assert requests.get(f"{gitlab_emulator.url}/api/v4/user/keys/{made['id']}", headers={"PRIVATE-TOKEN": eve},
                        timeout=10).status_code == 404
    deleted = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-X", "DELETE",
                              "-F", f"private_token={token}", f"{gitlab_emulator.url}/api/v4/user/keys/{made['id']}"],
                             capture_output=True, text=True, check=True).stdout
    assert deleted == "204"
    assert gl.user.keys.list() == []
    with pytest.raises(gitlab.GitlabDeleteError) as gone:
        gl.user.keys.delete(made["id"])
    assert gone.value.response_code == 404


def test_internal_api_needs_the_shell_secret(gitlab_emulator, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    gitlab_emulator.create_user("dicom_bot")
    token = gitlab_emulator.create_token("dicom_bot", ["api"])
    key = _keygen(tmp_path, "ed", "-t", "ed25519")
    code, made = _curl_add(gitlab_emulator.url, token, "k", key)
    assert code == 201
    url = f"{gitlab_emulator.url}/api/v4/internal/authorized_keys"
    assert requests.get(url, params={"key": key.split()[1]}, timeout=10).status_code == 401
    found = requests.get(url, params={"key": key.split()[1], "secret_token": gitlab_emulator.shell_secret}, timeout=10)
    assert found.status_code == 200 and found.json()["id"] == made["id"]
    unknown = requests.get(url, params={"key": "AAAA", "secret_token": gitlab_emulator.shell_secret}, timeout=10)
    assert unknown.status_code == 404
