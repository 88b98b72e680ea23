# smoke: a handful of small packages that exist in jammy AND in Debian 12, so
# the offline stand-in image (Debian 12) can really install them under TCG
# in a couple of minutes. No NodeSource, no pip, no npm.
#
# Count, measured on Debian 12 (where this profile is built): an mmdebstrap
# minbase root with systemd-sysv, udev, cloud-init, openssh-server,
# linux-image-cloud-amd64, initramfs-tools, ifupdown, isc-dhcp-client, sudo,
# dbus, ca-certificates, netbase, iproute2, gnupg, dirmngr holds 221 packages;
# after this profile's cloud-init run dpkg -l counted 237 ('ii' lines). A
# stand-in recipe with more base packages (EFI GRUB, the default variant)
# lands higher, hence the wide tolerance.
description: a few small packages present in jammy and Debian 12 (offline builds)
distros: ubuntu debian
apt: guest sandbox smoke
expected_installed: 250
tolerance: 25%
