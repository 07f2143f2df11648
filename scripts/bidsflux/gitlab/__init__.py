"""GitLab: objects of gitlab.yml, tokens, runners, the first admin token, day zero."""
