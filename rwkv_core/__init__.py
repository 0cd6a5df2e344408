"""Backbone of Eagle (RWKV-5.2) and Finch (RWKV-6)."""
