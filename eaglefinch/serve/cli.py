"""The `eaglefinch serve` command."""
import signal

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def load_served(checkpoint, state, dtype, device, adapters=None):
    """(model, tokenizer, vlm or None, name) of a text run, visual run, music run or bare model file.
    `adapters`: a LoRA adapters file to run with, unmerged (a LoRA run folder loads its own)."""
    from eaglefinch.rwkv_core.run import Run
    found = Run.open(checkpoint).found_domain
    if found == "music":
        from eaglefinch.music.run import MusicRun
        run = MusicRun.open(checkpoint)
        model, tokenizer = run.load(dtype=dtype, device=device, adapters=adapters)
        vlm = None
    elif found == "visual":
        from eaglefinch.visual.run import VisualRun
        run = VisualRun.open(checkpoint)
        vlm, tokenizer = run.load(device=device)
        if adapters is not None:
            from eaglefinch.rwkv_core.lora import load_adapters
            load_adapters(vlm.model, adapters)
        vlm = vlm.to(dtype)
        model = vlm.model
    else:
        from eaglefinch.text.run import TextRun
        run = TextRun.open(checkpoint)
        model, tokenizer = run.load(dtype=dtype, device=device, adapters=adapters)
        vlm = None
    if state is not None:
        from eaglefinch.rwkv_core.checkpoint import load_tuned_state
        load_tuned_state(model, state)
    name = run.model_file.stem if run.is_bare else run.folder.name
    return model, tokenizer, vlm, name


def cmd_serve(args):
    import uvicorn

    from .app import create_app
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = DTYPES[args.dtype or ("bf16" if device.startswith("cuda") else "fp32")]
    model, tokenizer, vlm, name = load_served(args.checkpoint, args.state, dtype, device, args.adapters)
    app = create_app(model, tokenizer, vlm=vlm, model_name=args.model_name or name, max_batch=args.max_batch,
                     max_prompt_tokens=args.max_prompt_tokens, default_max_tokens=args.default_max_tokens,
                     cache_mb=args.cache_mb, state_dir=args.state_dir, allow_local_files=args.allow_local_files,
                     max_image_bytes=int(args.max_image_mb * 2 ** 20),
                     engine_args={"prefill_tokens": args.prefill_chunk} if args.prefill_chunk else None)
    # uvicorn stops gracefully on SIGTERM, then raises it again for the handler that was there before
    # it started: this one, which lets the command end with exit status 0
    signal.signal(signal.SIGTERM, lambda *_: None)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning" if args.quiet else "info",
                timeout_graceful_shutdown=args.shutdown_timeout)


def add_command(parser):
    parser.add_argument("--checkpoint", required=True,
                        help="official .pth, .safetensors, or a run folder (text, visual or music)")
    parser.add_argument("--adapters", metavar="FILE",
                        help="LoRA adapters (.safetensors) to serve with, unmerged (a LoRA run folder loads its own)")
    parser.add_argument("--state", help="a tuned initial state file (.pth or .safetensors) for every request")
    parser.add_argument("--state-dir", help="a folder of state files (tuned, or saved RWKVStates) that a request "
                                            "may start from by name: {\"state\": \"NAME\"}")
    parser.add_argument("--cache-mb", type=float, default=512,
                        help="memory for the states after prompt prefixes (message boundaries, images); "
                             "0 turns the cache off (default 512)")
    parser.add_argument("--prefill-chunk", type=int,
                        help="prompt tokens read per step between decode steps (default 4096 on a GPU, 1024 on "
                             "the CPU)")
    parser.add_argument("--allow-local-files", metavar="DIR",
                        help="let chat requests of a visual run name images by path under DIR")
    parser.add_argument("--max-image-mb", type=float, default=20, help="larger images get a 400 (default 20)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-batch", type=int, default=16, help="sequences decoded at once (default 16)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="default: bf16 on a GPU, fp32 on the CPU")
    parser.add_argument("--device", help="default: cuda if available, else cpu")
    parser.add_argument("--max-prompt-tokens", type=int, default=8192, help="longer prompts get a 400 (default 8192)")
    parser.add_argument("--default-max-tokens", type=int, default=256,
                        help="max_tokens of a request that gives none (default 256)")
    parser.add_argument("--model-name", help="the id /v1/models reports (default: the checkpoint's name)")
    parser.add_argument("--shutdown-timeout", type=float, default=5.0,
                        help="on SIGTERM, seconds that requests in flight may take to finish before they are "
                             "cancelled (default 5)")
    parser.add_argument("--quiet", action="store_true", help="log warnings only")
    parser.set_defaults(func=cmd_serve)
