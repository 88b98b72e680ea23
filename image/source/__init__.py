"""Where the base image comes from: download, checksums and signatures, the image cache,
the offline mirror and stand-in.
"""
