"""The VM's only way out: the host's egress proxy and policy, and the guest's network
wiring to it.
"""
