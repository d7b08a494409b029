"""Runtimes: one interface (base.Runtime), two implementations (native processes, Docker)."""
