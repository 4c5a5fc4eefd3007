"""Steering speed: N new tokens through SAEHandle.steer against the model's own generate.

    .venv/bin/python benchmarks/steer_bench.py --sae runs/p/pareto/topk-k32-s0 --tokens 30

One process, one model object, one thread setting (torch's default unless --threads):
- `generate, as loaded`: HookedTransformer.generate (KV cache, sampling, no hooks), before
  store.weight_layout.copy_free_layout;
- `generate`: the same call after it (the layout steering runs with);
- `steer`: SAEHandle.steer end to end (default and steered continuations in one batch, the
  latent read back on both, held-out CE with the hook), after one warm-up call that reads the
  strength units and the clean CE, which later calls reuse;
- `steer, loss after decoding`: the same with steering.OVERLAP_LOSS off (the held-out pass
  waits for decoding instead of running beside it in a worker thread);
- `steer: generation`: the generation part of the same calls;
- `steer, no KV cache`: the paired generation recomputing the whole sequence each step (once).
Prints medians, the ratio steer / generate, and whether strength 0 reproduced the default.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch


def _median(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sae", default="runs/p/pareto/topk-k32-s0")
    parser.add_argument("--latent", type=int, default=None,
                        help="default: the latent with the largest max activation")
    parser.add_argument("--strength", type=float, default=4.0)
    parser.add_argument("--tokens", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--prompt", default="I think that")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from saebench.api import SAEHandle
    from saebench.steer_sampling import paired_generate
    from saebench.steering import SteeringHook
    from saebench.steering_inputs import _units
    from store.weight_layout import copy_free_layout

    handle = SAEHandle(Path(args.sae))
    t0 = time.perf_counter()
    model = handle.model
    print(f"model {handle.model_name} loaded in {time.perf_counter() - t0:.1f} s; "
          f"torch threads {torch.get_num_threads()}")
    ids = handle.tokens(args.prompt)

    def generate():
        torch.manual_seed(0)
        return model.generate(ids, max_new_tokens=args.tokens, do_sample=True, temperature=1.0,
                              stop_at_eos=False, use_past_kv_cache=True, verbose=False)

    generate()  # warm-up
    as_loaded, _ = _median(generate, args.repeats)
    copy_free_layout(model)
    generate()
    plain, _ = _median(generate, args.repeats)

    t0 = time.perf_counter()
    units = _units(str(handle.path), (handle.path / "sae_weights.safetensors").stat().st_mtime,
                   handle.sparse_coder)
    latent = args.latent if args.latent is not None else int(units[0].argmax())
    zero = handle.steer(latent, 0.0, prompt=args.prompt, n_tokens=args.tokens)
    first = time.perf_counter() - t0
    steer, result = _median(lambda: handle.steer(latent, args.strength, prompt=args.prompt,
                                                 n_tokens=args.tokens), args.repeats)
    gen_part = result.seconds["generate"]
    from saebench import steering

    steering.OVERLAP_LOSS = False  # the same calls with the held-out loss after decoding
    serial, serial_result = _median(lambda: handle.steer(
        latent, args.strength, prompt=args.prompt, n_tokens=args.tokens), args.repeats)
    steering.OVERLAP_LOSS = True
    same = (serial_result.loss.ce_steered == result.loss.ce_steered
            and serial_result.steered.ids == result.steered.ids)

    hook = SteeringHook(handle.sparse_coder, [latent], torch.tensor([args.strength * units[0][
        latent]]), "add", 1, rows=slice(1, 2))
    t0 = time.perf_counter()
    paired_generate(model, ids[0], handle.hook_name, hook, args.tokens, 1.0, 0,
                    use_kv_cache=False)
    no_cache = time.perf_counter() - t0

    n = args.tokens
    print(f"\n| run | seconds for {n} tokens | tokens/s |\n|---|---|---|")
    for name, secs in (("generate, as loaded", as_loaded), ("generate", plain),
                       ("steer (end to end)", steer),
                       ("steer, loss after decoding (no overlap)", serial),
                       ("steer: generation", gen_part),
                       ("steer, no KV cache (generation)", no_cache)):
        print(f"| {name} | {secs:.2f} | {n / secs:.1f} |")
    print(f"\nsteer / generate = {steer / plain:.2f}; steer generation / generate = "
          f"{gen_part / plain:.2f}; as-loaded generate / generate = {as_loaded / plain:.2f}")
    print(f"first steer call (units from {zero.max_act_source}, clean CE): {first:.1f} s")
    print("steer parts: " + ", ".join(f"{k} {v:.2f} s" for k, v in result.seconds.items()))
    print(f"strength 0 reproduces the default: {zero.steered.ids == zero.default.ids}")
    print(f"overlapped and serial loss and text identical: {same}")
    print(f"\nlatent {latent} (max act {result.max_acts[0]:.3g}), add × {args.strength}:")
    for name, gen in (("default", result.default), ("steered", result.steered)):
        acts = gen.acts[latent]
        print(f"  {name}: mean act {sum(acts) / max(len(acts), 1):.3f}  {gen.text!r}")
    loss = result.loss
    if loss is not None:
        print(f"  held-out CE {loss.ce_default:.4f} -> {loss.ce_steered:.4f} "
              f"({loss.delta:+.4f}; {loss.source})")


if __name__ == "__main__":
    main()
