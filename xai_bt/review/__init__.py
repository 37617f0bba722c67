"""Pages a clinician reads: the content of one case, the self-contained HTML report, the local web server."""
