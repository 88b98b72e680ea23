# smoke: a handful of small packages that exist in jammy AND in Debian, so the
# offline stand-in (Debian 13) can really install them under TCG in a couple of
# minutes. No NodeSource, no pip, no npm.
#
# Count: on the stand-in the build measured 239 (./inv demo, 2026-12-04; the
# Debian map holds that figure). On jammy the cloud image alone holds about 600
# packages and these add a few (qemu-guest-agent, bubblewrap, socat, jq and
# their libraries): 610, with a wide tolerance until a jammy build records its
# own count (verify.installed_count in build-info.json).
description: a few small packages present in jammy and Debian (offline builds)
distros: ubuntu debian
apt: guest sandbox smoke
expected_installed: 610
tolerance: 15%
