# smoke: a handful of small packages that exist in jammy AND in Debian 12, so
# the offline stand-in image (Debian 12) can really install them under TCG
# in a couple of minutes. No NodeSource, no pip, no npm.
#
# Estimate (for the Debian 12 stand-in, where this profile is built): a base
# of Priority required+important plus cloud-init, openssh-server, a cloud
# kernel and grub is ~282 packages on Debian 12; these groups add 14 more
# (apt-cache depends --recurse, no recommends). The stand-in recipe may carry
# a few more or fewer base packages, hence the wide tolerance.
description: a few small packages present in jammy and Debian 12 (offline builds)
distros: ubuntu debian
apt: guest sandbox smoke
expected_installed: 300
tolerance: 25%
