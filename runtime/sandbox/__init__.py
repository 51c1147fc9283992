"""The jail tool agents' Python runs in: bubblewrap, rlimits and a seccomp filter."""
