"""The shipped configs, as package data: model presets (`finch-1.6b.json`, ...), training configs
(`text-tiny.json`, ...) and DeepSpeed configs (`deepspeed/zero1.json`, ...). Every command that takes
a config accepts one of these names or a path to a JSON file of your own (`rwkv_core.config`)."""
