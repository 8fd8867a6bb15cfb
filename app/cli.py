"""Console commands: `freeze-omni infer`, `freeze-omni make-tiny`, `freeze-omni serve`."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from app.model import LINEAR_WEIGHTS, SEGMENTATIONS, SERVER_SEGMENTATION

DESCRIPTION = """\
Real-time speech-to-speech serving for Freeze-Omni-family duplex voice models.

Without --model-path/--llm-path every command uses the embedded default: a small Freeze-Omni
trained in this repository on synthetic speech (models/trained, see training/README.md). It
answers about 50 simple spoken questions (greetings, arithmetic, colours, days). Point the paths
at a real checkpoint (the published Freeze-Omni layout plus a Qwen2-7B-Instruct folder) for open
conversation.
"""


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model-path",
        type=Path,
        help="Freeze-Omni checkpoint folder (audiollm/, decoder/, codec/, server.json)",
    )
    group.add_argument("--llm-path", type=Path, help="Hugging Face Qwen2 folder (config, weights, tokenizer)")
    group.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default: cpu)")
    group.add_argument(
        "--dtype", default="auto", help="auto (fp32 on CPU, bf16 on GPU), float32, bfloat16 or float16"
    )
    group.add_argument(
        "--llm-weights",
        choices=LINEAR_WEIGHTS,
        help="the LLM's linear layers: dtype (as loaded), bfloat16, int8 (weight-only, per channel; a "
        "CPU's LLM reads a quarter of the bytes), auto (int8 on a CPU with native bf16 running fp32, else "
        "dtype). Default: dtype for infer (the reference path), FREEZE_OMNI_LLM_WEIGHTS (auto) for serve",
    )
    group.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads (default 1, or FREEZE_OMNI_TORCH_THREADS; 0: torch's default, one per "
        "core). One leaves a core to the server's event loop; see the README's settings table",
    )
    group.add_argument(
        "--strict-load",
        action="store_true",
        default=None,
        help="refuse weight files that hold anything the model does not use (optimizer or EMA state, "
        "step counters, a 'module.' prefix); by default such content is skipped and logged",
    )


def _resolve_model_paths(args: argparse.Namespace) -> tuple[Path, Path]:
    if (args.model_path is None) != (args.llm_path is None):
        raise SystemExit(
            "error: give both --model-path and --llm-path, or neither (to use the embedded default)"
        )
    if args.model_path is not None:
        return args.model_path, args.llm_path
    from app.model import ensure_default_model

    paths = ensure_default_model()
    return paths.model_path, paths.llm_path


def _torch_threads(args: argparse.Namespace) -> int:
    if args.threads is not None:
        if args.threads < 0:
            raise SystemExit("error: --threads must be 0 (torch's default) or more")
        return args.threads
    from app.config import Settings

    return Settings().torch_threads


def _cmd_infer(args: argparse.Namespace) -> int:
    import torch

    from app.model import (
        INPUT_RATE,
        OUTPUT_RATE,
        CheckpointError,
        InferOptions,
        LLMSampling,
        OfflinePipeline,
        WavError,
        load_freeze_omni,
        post_process,
        read_wav,
        resample,
        set_torch_threads,
        write_wav,
    )

    try:
        samples, rate = read_wav(args.input_wav)
    except (OSError, WavError) as error:
        raise SystemExit(f"error: cannot read {args.input_wav}: {error}") from error
    if len(samples) == 0:
        raise SystemExit(f"error: {args.input_wav} holds no audio")
    samples = resample(samples, rate, INPUT_RATE)
    model_path, llm_path = _resolve_model_paths(args)
    set_torch_threads(_torch_threads(args))
    try:
        model = load_freeze_omni(
            model_path,
            llm_path,
            device=args.device,
            dtype=args.dtype,
            llm_weights=args.llm_weights or "dtype",
            strict=bool(args.strict_load),
        )
    except (FileNotFoundError, CheckpointError, ValueError) as error:
        raise SystemExit(f"error: cannot load the model: {error}") from error
    options = InferOptions(
        sampling=LLMSampling(
            temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, greedy=args.greedy
        ),
        decoder_top_k=args.decoder_top_k,
        decoder_greedy=args.greedy,
        seed=args.seed,
        max_new_tokens=args.max_tokens,
        system_role=args.system_prompt,
        segmentation=args.segmentation,
    )
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    result = OfflinePipeline(model).run(samples, options)
    elapsed = time.perf_counter() - started
    write_wav(args.output_wav, result.audio, OUTPUT_RATE)
    audio_s = len(result.audio) / OUTPUT_RATE
    input_s = len(samples) / INPUT_RATE
    if args.json:
        print(
            json.dumps(
                {
                    "text": result.text,
                    "llm_token_ids": result.token_ids,
                    "state_probs": [list(p) for p in result.state_probs],
                    "states": result.states,
                    "segmentation": args.segmentation,
                    "segments": [
                        {
                            "text": segment.text,
                            "spoken_text": post_process(segment.text),
                            "llm_token_ids": segment.token_ids,
                            "codec_token_ids": ids,
                        }
                        for segment, ids in zip(result.segments, result.codec_ids, strict=True)
                    ],
                    "codec_token_ids": result.codec_ids,
                    "output_wav": str(args.output_wav),
                    "input_seconds": round(input_s, 3),
                    "output_seconds": round(audio_s, 3),
                    "timings": {k: round(v, 4) for k, v in result.timings.items()},
                }
            )
        )
    else:
        print(f"answer: {result.text}")
        print(
            f"wrote {audio_s:.2f} s of 24 kHz audio to {args.output_wav} "
            f"({input_s:.2f} s in, {elapsed:.2f} s, real-time factor {elapsed / max(input_s + audio_s, 1e-9):.3f})"
        )
    return 0


def _cmd_make_tiny(args: argparse.Namespace) -> int:
    from app.model import make_tiny

    paths = make_tiny(args.dir, seed=args.seed)
    print(f"--model-path {paths.model_path} --llm-path {paths.llm_path}")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from app.config import Settings
    from app.serving import run_server

    devices = args.devices.split(",") if args.devices else ([args.device] if args.device else None)
    overrides = {
        key: value
        for key, value in {
            "host": args.host,
            "port": args.port,
            "model_path": args.model_path,
            "llm_path": args.llm_path,
            "devices": devices,
            "dtype": args.dtype,
            "llm_weights": args.llm_weights,
            "strict_load": args.strict_load,
            "torch_threads": args.threads,
            "max_sessions": args.max_sessions,
            "api_keys": args.api_key or None,
            "idle_timeout_s": args.idle_timeout,
            "ssl_keyfile": args.ssl_keyfile,
            "ssl_certfile": args.ssl_certfile,
            "instance_id": args.instance_id,
        }.items()
        if value is not None
    }
    settings = Settings(**overrides)
    if (settings.model_path is None) != (settings.llm_path is None):
        raise SystemExit(
            "error: give both --model-path and --llm-path, or neither (to use the embedded default)"
        )
    from app.native_memory import bound_mkldnn_lru_cache, bound_onednn_cache

    bound_onednn_cache(settings.onednn_primitive_cache_capacity)  # before torch loads (run_server)
    bound_mkldnn_lru_cache(settings.mkldnn_lru_cache_capacity)
    run_server(settings)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="freeze-omni", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    infer = commands.add_parser(
        "infer",
        help="answer one spoken question offline: WAV in, 24 kHz WAV out",
        description="Run one offline turn: the whole input WAV (any sample rate, resampled to 16 kHz) "
        "is the question; the spoken answer is written as a 24 kHz WAV.",
    )
    _add_model_args(infer)
    infer.add_argument("--input-wav", type=Path, required=True, help="the question (WAV, any rate)")
    infer.add_argument("--output-wav", type=Path, required=True, help="where to write the answer")
    sampling = infer.add_argument_group("sampling")
    from app.model import LLMSampling

    defaults = LLMSampling()
    sampling.add_argument(
        "--temperature",
        type=float,
        default=defaults.temperature,
        help="LLM temperature (default %(default)s)",
    )
    sampling.add_argument("--top-k", type=int, default=defaults.top_k, help="LLM top-k (default %(default)s)")
    sampling.add_argument(
        "--top-p", type=float, default=defaults.top_p, help="LLM top-p (default %(default)s)"
    )
    sampling.add_argument("--decoder-top-k", type=int, help="speech decoder top-k (default: server.json, 2)")
    sampling.add_argument("--greedy", action="store_true", help="argmax everywhere: deterministic output")
    sampling.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    sampling.add_argument("--max-tokens", type=int, default=128, help="answer length cap in LLM tokens")
    infer.add_argument("--system-prompt", help="system role text (default: the checkpoint's template)")
    infer.add_argument(
        "--segmentation",
        choices=SEGMENTATIONS,
        default=SERVER_SEGMENTATION,
        help="where answer text is cut for the speech decoder: 'server' (default; the released "
        "server's rule, as serve uses) or 'offline' (the released offline script's rule: every "
        "sentence end, no minimum, no commas; to compare with that script segment by segment)",
    )
    infer.add_argument(
        "--json",
        action="store_true",
        help="print text, token ids, state probabilities, the segmentation and per-segment text and "
        "codec ids as JSON",
    )
    infer.set_defaults(func=_cmd_infer)

    serve = commands.add_parser(
        "serve",
        help="run the server: OpenAI-Realtime WebSocket, REST turns, the browser page",
        description="Serve /v1/realtime (OpenAI Realtime protocol), POST /v1/turns, /healthz, /readyz, "
        "/metrics and the browser page at /. Every setting can also come from the environment as "
        "FREEZE_OMNI_<NAME> (see README); flags win.",
    )
    _add_model_args(serve)
    serve.set_defaults(device=None, dtype=None)
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1; 0.0.0.0 for the LAN)")
    serve.add_argument("--port", type=int, help="port (default 8000)")
    serve.add_argument(
        "--devices", help="comma-separated devices, one model replica each (e.g. cuda:0,cuda:1)"
    )
    serve.add_argument("--max-sessions", type=int, help="concurrent sessions per replica (default 16)")
    serve.add_argument(
        "--api-key", action="append", help="accept this API key (repeatable); none: open server"
    )
    serve.add_argument("--idle-timeout", type=float, help="seconds without client events before closing")
    serve.add_argument(
        "--ssl-keyfile", type=Path, help="TLS key file: serve https/wss (needed for a phone's mic)"
    )
    serve.add_argument("--ssl-certfile", type=Path, help="TLS certificate file")
    serve.add_argument(
        "--instance-id",
        help="this process's name in session.created, for a fleet behind a load balancer "
        "(default: hostname:port)",
    )
    serve.set_defaults(func=_cmd_serve)

    tiny = commands.add_parser(
        "make-tiny",
        help="write a tiny random Freeze-Omni checkpoint and Qwen2 folder",
        description="Write DIR/checkpoints (Freeze-Omni layout) and DIR/Qwen2-tiny with random "
        "weights from a fixed seed. Used as the embedded default and as the test fixture.",
    )
    tiny.add_argument("dir", type=Path, help="output folder")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(func=_cmd_make_tiny)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
