"""Turning a base image into a provisioned one: package lists, cloud-init, skills, the
build pipeline, manifest and SBOM, locks, package and layer caches.
"""
