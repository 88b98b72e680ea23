"""What the host and the image agree on: the guest's users, paths and proxy (guest),
and what a saved VM must match to be resumed (vmstate)."""
