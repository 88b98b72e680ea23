"""Using a built image: snapshots, launches, the demo."""
