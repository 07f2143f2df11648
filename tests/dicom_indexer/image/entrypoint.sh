#!/bin/bash
# Behaves as upstream's docker/dicom_indexer/entrypoint.sh (indexer-facts.md 1.2): credentials
# from /var/run/secrets/{dicom_bot_gitlab_token,s3_id,s3_secret} or the environment, the API at
# https://$CI_SERVER_HOST/api/v4, a fresh SSH key registered for the token's user with a
# multipart POST /user/keys, known_hosts from ssh-keyscan on $GIT_SSH_PORT (222 by default),
# the arguments run UNQUOTED ($@), the key deleted afterwards.
from_file=$(cat /var/run/secrets/dicom_bot_gitlab_token 2>/dev/null)
export GITLAB_TOKEN=${from_file:-$GITLAB_TOKEN}
id_file=$(cat /var/run/secrets/s3_id 2>/dev/null)
secret_file=$(cat /var/run/secrets/s3_secret 2>/dev/null)
export AWS_ACCESS_KEY_ID=${id_file:-$AWS_ACCESS_KEY_ID} AWS_SECRET_ACCESS_KEY=${secret_file:-$AWS_SECRET_ACCESS_KEY}
export GITLAB_API_URL=https://${CI_SERVER_HOST}/api/v4
export GIT_SSH_PORT=${GIT_SSH_PORT:-222}

mkdir -p ~/.ssh
if [ -n "${GITLAB_TOKEN}" ]; then
  ssh-keygen -q -f /root/.ssh/id_rsa -N ''
  echo 'registering the ssh key'
  key_json=$(curl -sS -X POST -F "private_token=${GITLAB_TOKEN}" -F "title=${HOSTNAME}" \
    -F "key=$(cat ~/.ssh/id_rsa.pub)" "${GITLAB_API_URL}/user/keys")
  key_id=$(jq .id <<< "$key_json")
fi

git config --global init.defaultBranch main
ssh-keyscan -p "${GIT_SSH_PORT}" -H "${CI_SERVER_HOST}" 2>/dev/null | install -m 600 /dev/stdin "$HOME/.ssh/known_hosts"

$@

if [ -n "${GITLAB_TOKEN}" ]; then
  curl -sS -X DELETE -F "private_token=${GITLAB_TOKEN}" "${GITLAB_API_URL}/user/keys/${key_id}"
fi
