"""Running QEMU: argv and process, accelerator probe, firmware, the guest agent, SSH."""
