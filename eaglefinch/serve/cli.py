"""The `eaglefinch serve` command."""
import signal

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def cmd_serve(args):
    import uvicorn

    from eaglefinch.text.run import TextRun

    from .app import create_app
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = DTYPES[args.dtype or ("bf16" if device.startswith("cuda") else "fp32")]
    run = TextRun.open(args.checkpoint)
    model, tokenizer = run.load(dtype=dtype, device=device, state=args.state)
    name = args.model_name or (run.model_file.stem if run.is_bare else run.folder.name)
    app = create_app(model, tokenizer, model_name=name, max_batch=args.max_batch,
                     max_prompt_tokens=args.max_prompt_tokens, default_max_tokens=args.default_max_tokens)
    # uvicorn stops gracefully on SIGTERM, then raises it again for the handler that was there before
    # it started: this one, which lets the command end with exit status 0
    signal.signal(signal.SIGTERM, lambda *_: None)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning" if args.quiet else "info",
                timeout_graceful_shutdown=args.shutdown_timeout)


def add_command(parser):
    parser.add_argument("--checkpoint", required=True, help="official .pth, .safetensors, or a text run folder")
    parser.add_argument("--state", help="a tuned initial state file (.pth or .safetensors)")
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
