"""Images the site builds itself: registry digests, pins in site.yml, bootstrap's wait for them."""
