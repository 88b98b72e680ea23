# full: the Cowork set on Ubuntu 22.04 (jammy).
#
# The expected dpkg count, from measurement (docs/packages.md, "Counts"):
#   The Debian 13 stand-in builds this profile end to end: 743 installed
#   (./inv test --full, 2026-12-04), i.e. its base image (236) plus 507 the groups
#   add with recommends off; `apt-get -s install` of the same names from the same
#   base predicted 742. With recommends on the groups would add about 220 more
#   (GTK, GStreamer, Mesa/VA/Vulkan drivers, PipeWire, sound fonts: a desktop's
#   media stack a headless sandbox never uses), so recommends stay off.
#   jammy: its cloud image holds about 600 packages, of which an estimated ~80 are
#   among the 507 (perl, git, gnupg, bind9 tools, editors...), so about
#   600 + 507 - 80 = 1,027. jammy itself cannot be installed here: the tolerance
#   is wide (12 %: 906..1,154) until the first jammy build records its own count
#   (verify.installed_count in build-info.json) and replaces this estimate.
#   The reference VM's 1,201 looks like a recommends-on install (~1,027 + ~220).
# Every listed apt package is checked one by one after the install (a missing
# group fails there); this count catches drift in what they pull in.
description: the Cowork set - runtimes, toolchain, document stack, skills libraries
distros: ubuntu debian
apt: guest sandbox base toolchain python java nodejs documents fonts network-dev
pip: skills
npm: skills
sources: nodesource
expected_installed: 1030
tolerance: 12%
