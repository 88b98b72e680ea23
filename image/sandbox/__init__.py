"""The in-guest sandbox as the host builds it: seccomp compilation, bubblewrap profiles,
the files the image carries.
"""
