"""Publishing and comparing builds: OCI artifacts, the local registry, reports and diffs."""
