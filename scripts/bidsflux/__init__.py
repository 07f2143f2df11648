"""bidsflux: a BIDS-flux data stack (GitLab, runners, MinIO, DICOM endpoint) as code."""

__version__ = "0.1.0"
