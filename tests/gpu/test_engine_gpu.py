"""The engine on the GPU (skipped without CUDA), compiled and captured as CUDA graphs, against the plain
model token by token: fp32 greedy tokens equal for 256 steps (Eagle and Finch, sequences joining and
leaving a running batch); bf16 logits within a stated tolerance of the fp32 model; a sequence's
output independent of its batch companions. Run on the device: python -m pytest -q tests/gpu"""
import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("needs CUDA", allow_module_level=True)

from eaglefinch.rwkv_core import RWKV                                   # noqa: E402
from eaglefinch.rwkv_core.checkpoint import infer_config                # noqa: E402
from eaglefinch.rwkv_core.engine import Engine                          # noqa: E402
from eaglefinch.rwkv_core.sampling import BatchSampler, SamplerConfig   # noqa: E402

from ..core.official_ckpt import random_official_state_dict             # noqa: E402
from ..core.test_engine import check_joining_batch, reference_greedy    # noqa: E402

# every engine here compiles the layer step for its own model (dtype, arch): more than dynamo's default
# of 8 versions of one function per process
torch._dynamo.config.cache_size_limit = 64

# bf16 against the fp32 model: max |bf16 - fp32| / max |fp32| over a step's logits. The engine may
# round differently from the plain bf16 model (fused operations, other matmul kernels) but must be no
# worse than it by more than twice, and never beyond BF16_LOGIT_TOL.
BF16_LOGIT_TOL = 0.05
BF16_VS_PLAIN = 2.0


def gpu_model(arch, dtype, tuned=False, seed=0):
    sd = random_official_state_dict(arch, n_layer=4, n_embd=256, vocab_size=1000, head_size=64, mix_lora=32,
                                    decay_lora=64, decay="typical", tuned_state=tuned, seed=seed)
    model = RWKV(infer_config(sd))
    model.load_state_dict(sd)
    return model.to("cuda", dtype).eval()


def relative_error(logits, ref):
    return ((logits.float() - ref).abs().max() / ref.abs().max()).item()


@pytest.mark.parametrize("arch,tuned", [("eagle", False), ("finch", False), ("finch", True)])
def test_graphed_engine_greedy_equals_plain_model_fp32(arch, tuned):
    model = gpu_model(arch, torch.float32, tuned)
    engine_kinds = []

    def make(m, n):
        engine = Engine(m, max_batch=n, prefill_tokens=16)
        assert engine.cuda_graphs and engine.compile
        engine_kinds.append(engine)
        return engine
    check_joining_batch(model, make, rtol=1e-3, atol=1e-3)
    assert engine_kinds[0]._graphs, "decode did not run as CUDA graphs"


@pytest.mark.parametrize("arch", ["eagle", "finch"])
def test_bf16_engine_logits_within_tolerance_of_fp32(arch):
    ref_model = gpu_model(arch, torch.float32)
    model = gpu_model(arch, torch.bfloat16)
    prompt = list(range(3, 40))
    tokens, ref_logits = reference_greedy(ref_model, prompt, 64, "cuda")
    engine = Engine(model, max_batch=4)
    slot = engine.allocate(1)
    logits = engine.prefill(slot, [prompt])
    with torch.no_grad():   # the plain bf16 model on the same tokens
        plain, state = model(torch.tensor([prompt], device="cuda"))
        plain = plain[0, -1]
    engine_errs, plain_errs = [], []
    for t, token in enumerate(tokens):   # teacher-forced: the fp32 model's tokens
        engine_errs.append(relative_error(logits[0], ref_logits[t]))
        plain_errs.append(relative_error(plain, ref_logits[t]))
        logits = engine.decode(slot, [token])
        with torch.no_grad():
            plain, state = model(torch.tensor([[token]], device="cuda"), state)
            plain = plain[0, -1]
    print(f"{arch}: max relative logit error against the fp32 model over 64 steps: bf16 engine "
          f"{max(engine_errs):.4f}, plain bf16 model {max(plain_errs):.4f}")
    assert max(engine_errs) <= BF16_LOGIT_TOL
    assert max(engine_errs) <= BF16_VS_PLAIN * max(plain_errs)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, BF16_LOGIT_TOL)])
def test_a_sequence_does_not_depend_on_its_batch_companions(dtype, tol):
    """The same prompt and tokens alone (bucket 1) and at row 13 of a batch of 20 (bucket 32, padded
    with scratch slots): the same logits, to fp32 precision or within the bf16 tolerance (the batch
    changes the matrix kernels' blocking, so 16-bit results round differently)."""
    model = gpu_model("finch", dtype, seed=5)
    engine = Engine(model, max_batch=32)
    prompt = [5, 6, 7, 8]
    solo = engine.allocate(1)
    logits = engine.prefill(solo, [prompt])
    tokens, alone = [], []
    for _ in range(48):
        alone.append(logits[0])
        tokens.append(int(logits[0].argmax()))
        logits = engine.decode(solo, tokens[-1:])
    engine.release(solo)
    slots = engine.allocate(20)
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 1000, (int(n),), generator=g).tolist() for n in torch.randint(1, 30, (20,), generator=g)]
    prompts[13] = prompt
    logits = engine.prefill(slots, prompts)
    errs = []
    for t in range(48):
        errs.append(((logits[13] - alone[t]).abs().max() / alone[t].abs().max()).item())
        ids = logits.argmax(-1)
        ids[13] = tokens[t]
        logits = engine.decode(slots, ids)
    print(f"{dtype}: alone vs in a batch of 20, max relative logit difference {max(errs):.2e}")
    assert max(errs) <= tol


def test_scheduler_on_the_gpu_gives_the_plain_models_greedy_tokens():
    """The scheduler's CUDA path (the decode step launched with the sampled ids still on the device,
    the ids read through a pinned copy and an event): requests joining a running batch, one of them
    ending at a stop token, each get the plain fp32 model's greedy tokens."""
    from eaglefinch.rwkv_core.sampling import SamplerConfig
    from eaglefinch.rwkv_core.scheduler import Scheduler

    from ..core.test_scheduler import Collector

    model = gpu_model("finch", torch.float32, seed=7)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(1, 1000, (n,), generator=g).tolist() for n in (4, 9, 1, 17, 6)]
    lengths = [40, 25, 60, 10, 33]
    expected = [reference_greedy(model, p, n, device="cuda")[0] for p, n in zip(prompts, lengths)]
    stop = expected[2][30]   # the third request stops at its 31st token (or earlier, if it comes before)
    scheduler = Scheduler(model, max_batch=3)
    try:
        collectors = [Collector() for _ in prompts]
        for i, (prompt, n, c) in enumerate(zip(prompts, lengths, collectors)):
            scheduler.submit(prompt, n, SamplerConfig(temperature=0.0), seed=0, on_token=c,
                             stop_ids=(stop,) if i == 2 else ())
        for c in collectors:
            assert c.done.wait(120)
        for i, (want, c) in enumerate(zip(expected, collectors)):
            if i == 2:
                want = want[:want.index(stop)]
                assert c.reason == "stop"
            else:
                assert c.reason == "length"
            assert c.tokens == want
    finally:
        scheduler.close()


@pytest.mark.parametrize("arch", ["eagle", "finch"])
def test_prefill_and_decode_never_make_the_host_wait_for_the_gpu(arch):
    """A blocking copy or read-back in prefill, decode or the sampler stalls the host until the GPU has
    run all it has queued: the host's work stops overlapping the GPU's (a wait per layer made prefill
    host-bound; nine per request in `BatchSampler.configure` held the scheduler's admissions). Under
    torch's sync debug mode "error" any such call raises; every path must run through it."""
    model = gpu_model(arch, torch.bfloat16)
    engine = Engine(model, max_batch=4)
    sampler = BatchSampler(4, model.cfg.vocab_size, device="cuda")
    slots = engine.allocate(3)
    rows = torch.tensor(slots, device="cuda")
    prompts = [list(range(5, 5 + n)) for n in (70, 3, 130)]   # packed, with chunks of 64 and a remainder
    settings = [SamplerConfig(temperature=0), SamplerConfig(temperature=1.0, top_p=0.9, top_k=10),
                SamplerConfig(temperature=0.7, presence_penalty=0.5, frequency_penalty=0.2, banned_tokens=(0,))]
    for _ in range(2):                                        # the first round compiles; the second is checked
        engine.pool.reset(slots)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error" if _ else 0)
        try:
            logits = engine.prefill(slots, prompts)
            for slot, cfg in zip(slots, settings):
                sampler.configure(slot, cfg, seed=slot)
            ids = sampler.sample(logits, rows)
            for _step in range(3):
                ids = sampler.sample(engine.decode(slots, ids), rows)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    assert torch.isfinite(logits).all() and ids.shape == (3,)
