"""visual domain package (depends on rwkv_core): VisualRWKV image-to-text on the shared backbone.

    images.py       load_image / iter_folder_images: any image file -> RGB, or one ImageError
    encoder.py      VisionEncoder: an open_clip vision tower -> patch tokens [B, N, width]
    projector.py    build_projector: tokens -> the language model's n_embd
    prompt.py       token layout of a conversation, image splicing, bidirectional span, per-sample loss
    data.py         JSONL records (LLaVA conversations, image-caption pairs), VisualDataset
    shapes.py       procedural shapes with exact captions (the embedded default data)
    clip_train.py   train a small open_clip CLIP on local pairs, for the encoder's weights
    openclipart.py  Debian's openclipart-svg -> PNG + captions JSONL
"""
