# full: the Cowork software set on Ubuntu 22.04 (jammy).
#
# How expected_installed was estimated (jammy cannot be installed here):
#   dpkg count of the jammy server cloud image before provisioning  ~600
#   + what these groups pull in beyond a base system                 ~644
#   - packages both already share (git, curl, perl, python3 libs)     ~45
#   = ~1,200, which matches the 1,201 the reference sandbox reports.
# The 644 is a proxy measured on Debian 12 with the jammy-only names mapped
# (gcc-11 -> gcc-12, openjdk-11 -> openjdk-17, NodeSource nodejs counted as 1):
#   apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts \
#     --no-breaks --no-replaces --no-enhances <groups>   -> 794 packages
#   the same over Priority required+important plus cloud-init, openssh-server,
#     a cloud kernel, grub-efi, sudo                    -> 282 packages
#   union 926, so 926 - 282 = 644 added by the groups.
# Recommends are off in the image (APT::Install-Recommends "false"), which is
# why the closure ignores them. The builder compares the real dpkg count.
description: the Cowork set - runtimes, toolchain, document stack, skills libraries
distros: ubuntu debian
apt: guest sandbox base toolchain python java nodejs documents fonts network-dev
pip: skills
npm: skills
sources: nodesource
expected_installed: 1201
tolerance: 5%
