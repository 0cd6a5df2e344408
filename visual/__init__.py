"""visual domain package (depends on rwkv_core)."""
