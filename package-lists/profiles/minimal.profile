# minimal: the runtimes only (Python 3.10, Node.js 22, OpenJDK 11) and the
# sandbox plumbing, without the document stack or the skills libraries.
#
# Estimate: the jammy cloud image (~600) plus ~83 packages these groups pull
# in beyond a base system, measured like full.profile on Debian 12 as a proxy
# (apt-cache depends --recurse, no recommends). Wider tolerance: the base
# image's own share weighs more here.
description: runtimes only - Python, Node.js, Java and the sandbox plumbing
distros: ubuntu debian
apt: guest sandbox base python java nodejs
sources: nodesource
expected_installed: 680
tolerance: 10%
