"""The CPU model: ThreadContext (``thread``) and the KVM CPU (``kvm``)."""
