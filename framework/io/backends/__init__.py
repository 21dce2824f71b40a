"""Backends of the provider layer; each module is import-safe on every OS."""
