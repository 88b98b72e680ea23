"""Files installed into the VM image. Standard library only; they must run on Python 3.10."""
