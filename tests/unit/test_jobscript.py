"""Job scripts: hostile values are rejected or inert; the rendered script keeps the job contract.

The contract tests run rendered scripts with plain bash (no Slurm): `#SBATCH` lines are comments to
bash, so the body's quoting, registration, signal handling and exit codes can be checked quickly.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from slurm.errors import ScriptValidationError
from slurm.jobscript import JobSpec, job_name, render_job_script
from tests.fixtures.callback_receiver import CallbackReceiver

TOKEN = "cbtoken-0123456789abcdef0123456789"
API_KEY = "apikey-0123456789abcdef0123456789"
BASH = shutil.which("bash") or "/bin/bash"


def _spec(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "instance_id": "abc123",
        "model_name": "llama-3.1-8b",
        "model_source": "/models/llama-3.1-8b",
        "time_limit_min": 60,
        "time_min_min": 20,
        "callback_url": "http://10.1.2.3:8080/slurmless/cb",
        "callback_token": TOKEN,
        "engine_api_key": API_KEY,
        "output_dir": "/scratch/slurmless/logs",
        "partition": "gpu",
        "qos": "normal",
        "account": "llm",
        "constraint": "[a100|h100]",
        "model_roots": ("/models", "/opt/templates"),
        "ray_auth_token": "raytoken-0123456789abcdef0123456789",
    }
    base.update(overrides)
    return base


def _sbatch_lines(script: str) -> list[str]:
    return [line for line in script.splitlines() if line.startswith("#SBATCH")]


def _bash_syntax_ok(script: str, tmp_path: Path) -> None:
    path = tmp_path / "job.sh"
    path.write_text(script)
    subprocess.run([BASH, "-n", str(path)], check=True, timeout=10)


# --- rendering ----------------------------------------------------------------------------------


def test_header_single_gpu(tmp_path: Path) -> None:
    spec = JobSpec.parse(_spec())
    script = render_job_script(spec)
    assert script.startswith("#!/bin/bash\n")
    assert _sbatch_lines(script) == [
        "#SBATCH --job-name=slurmless-llama-3.1-8b-abc123",
        "#SBATCH --comment=slurmless:abc123",
        "#SBATCH --nodes=1",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --cpus-per-task=4",
        "#SBATCH --mem=16000M",
        "#SBATCH --time=60",
        "#SBATCH --signal=B:USR1@120",
        "#SBATCH --output=/scratch/slurmless/logs/slurmless-llama-3.1-8b-abc123-%j.out",
        "#SBATCH --chdir=/scratch/slurmless/logs",
        "#SBATCH --export=NONE",
        "#SBATCH --no-requeue",
        "#SBATCH --gres=gpu:1",
        "#SBATCH --time-min=20",
        "#SBATCH --partition=gpu",
        "#SBATCH --qos=normal",
        "#SBATCH --account=llm",
        "#SBATCH --constraint=[a100|h100]",
    ]
    # Every #SBATCH line sits in the header block, before the first command.
    header_end = script.index("\nset -u\n")
    assert "#SBATCH" not in script[header_end:]
    assert "--tensor-parallel-size" not in script
    assert job_name(spec) == "slurmless-llama-3.1-8b-abc123"
    _bash_syntax_ok(script, tmp_path)


def test_tensor_parallel_single_node(tmp_path: Path) -> None:
    script = render_job_script(JobSpec.parse(_spec(gpus_per_node=4)))
    assert "#SBATCH --gres=gpu:4" in script
    assert "--tensor-parallel-size 4" in script
    assert "ray" not in script.split("\nset -u\n", 1)[1].split("SLURMLESS_ENGINE_ARGV=")[1].split("\n")[0]
    _bash_syntax_ok(script, tmp_path)


def test_multi_node_uses_ray(tmp_path: Path) -> None:
    script = render_job_script(JobSpec.parse(_spec(gpus_per_node=4, nodes=3)))
    assert "#SBATCH --nodes=3" in script
    assert "--tensor-parallel-size 4 --pipeline-parallel-size 3 --distributed-executor-backend ray" in script
    assert "start --head" in script
    assert "srun --export=ALL --nodes=2 --ntasks=2 --ntasks-per-node=1" in script
    assert '--exclude="$SLURMD_NODENAME"' in script
    assert ">= 12 else 1" in script  # waits for all 12 GPUs to join
    assert "stop --force" in script
    # Ray's control plane takes only this job's token, listens on the node's address, runs no dashboard.
    assert "export RAY_AUTH_MODE=token" in script
    assert "SLURMLESS_RAY_AUTH_TOKEN=raytoken-0123456789abcdef0123456789" in script
    assert '--node-ip-address="$SLURMLESS_HOST"' in script and "--include-dashboard=false" in script
    with pytest.raises(ScriptValidationError, match="Ray auth token"):
        JobSpec.parse(_spec(gpus_per_node=4, nodes=3, ray_auth_token=None))
    _bash_syntax_ok(script, tmp_path)


def test_engine_args_and_defaults() -> None:
    spec = JobSpec.parse(
        _spec(
            engine_args={
                "--max-model-len": 8192,
                "--enforce-eager": True,
                "--enable-lora": False,
                "--gpu-memory-utilization": 0.85,
                "--dtype": "bfloat16",
                "--tokenizer": "meta-llama/Llama-3.1-8B-Instruct",
                "--chat-template": "/opt/templates/llama.jinja",
            },
            served_model_name="meta-llama/Llama-3.1-8B-Instruct",
        )
    )
    line = next(x for x in render_job_script(spec).splitlines() if x.startswith("SLURMLESS_ENGINE_ARGV="))
    assert line == (
        "SLURMLESS_ENGINE_ARGV=(python3 -m vllm.entrypoints.openai.api_server --model /models/llama-3.1-8b"
        " --served-model-name meta-llama/Llama-3.1-8B-Instruct --chat-template /opt/templates/llama.jinja"
        " --dtype bfloat16 --enforce-eager --gpu-memory-utilization 0.85 --max-model-len 8192"
        " --tokenizer meta-llama/Llama-3.1-8B-Instruct)"
    )
    # The API key travels in the environment, never in argv.
    assert API_KEY not in line
    assert spec.effective_drain_s == 120 - 5 - 15 - 15


# --- hostile values are rejected ----------------------------------------------------------------

SMUGGLE = "x\n#SBATCH --uid=0"
HOSTILE: list[tuple[str, Any]] = [
    ("instance_id", "ABC"),
    ("instance_id", "a;b"),
    ("instance_id", "a\nb"),
    ("model_name", "x;touch /tmp/pwned"),
    ("model_name", "$(touch /tmp/pwned)"),
    ("model_name", "`id`"),
    ("model_name", SMUGGLE),
    ("model_name", "a..b"),
    ("model_name", ""),
    ("model_source", "/models/$(touch /tmp/pwned)"),
    ("model_source", "/models/`id`"),
    ("model_source", "/models/../../etc/shadow"),
    ("model_source", "/models/./x"),
    ("model_source", "/models//x"),
    ("model_source", "/models/a;b"),
    ("model_source", "/models/a b"),
    ("model_source", "/models/x\n#SBATCH --uid=0"),
    ("model_source", "/models/x\x00y"),
    ("model_source", "org/../x"),
    ("model_source", "../org/name"),
    ("model_source", "org/name;ls"),
    ("model_source", "org/name/extra"),
    ("model_source", "-org/name"),
    ("model_source", "relative"),
    ("served_model_name", "$(id)"),
    ("served_model_name", "a b"),
    ("served_model_name", "../x"),
    ("served_model_name", "--port"),
    ("partition", "gpu\n#SBATCH --qos=high"),
    ("partition", "gpu;ls"),
    ("partition", "gpu --qos=high"),
    ("qos", "high\n"),
    ("qos", "$(id)"),
    ("account", "`id`"),
    ("constraint", "a100 && id"),
    ("constraint", "a100\n#SBATCH --uid=0"),
    ("constraint", "$(id)"),
    ("callback_url", "http://x/$(id)"),
    ("callback_url", "http://x/`id`"),
    ("callback_url", "file:///etc/passwd"),
    ("callback_url", "http://user:pw@x/cb"),
    ("callback_url", "http://x/cb?a=1"),
    ("callback_url", "http://x/c b"),
    ("callback_url", "http://x/cb\n#SBATCH --uid=0"),
    ("callback_url", "http://x/../cb"),
    ("callback_url", "http://x:99999/cb"),
    ("callback_url", "http://x;id/cb"),
    ("callback_token", "short"),
    ("callback_token", "$(touch /tmp/pwned)0123456789"),
    ("engine_api_key", "aaaaaaaaaaaaaaaa'; id; '"),
    ("engine_api_key", "a" * 20 + "\n"),
    ("output_dir", "/scratch/%x"),
    ("output_dir", "/scratch/../etc"),
    ("output_dir", "scratch/logs"),
    ("output_dir", "/scratch/a b"),
    ("output_dir", "/scratch/a\n#SBATCH --uid=0"),
    ("env_setup_lines", ["module load cuda", "#SBATCH --qos=high"]),
    ("env_setup_lines", ["module load cuda\n#SBATCH --qos=high"]),
    ("env_setup_lines", ["module load\x00cuda"]),
    ("engine_args", {"--trust-remote-code": True}),
    ("engine_args", {"--port": 1234}),
    ("engine_args", {"--api-key": "x"}),
    ("engine_args", {"--tensor-parallel-size": 8}),
    ("engine_args", {"--max-model-len": "1; rm -rf /"}),
    ("engine_args", {"--max-model-len": True}),
    ("engine_args", {"--max-model-len": -1}),
    ("engine_args", {"--dtype": "$(id)"}),
    ("engine_args", {"--dtype": "--port=1"}),
    ("engine_args", {"--enforce-eager": "yes"}),
    ("engine_args", {"--gpu-memory-utilization": 1.5}),
    ("engine_args", {"--chat-template": "../../etc/passwd"}),
    ("engine_args", {"--chat-template": "/t/$(id).jinja"}),
    ("engine_args", {"--tokenizer": "/a/`id`"}),
    ("engine_env", {"LD_PRELOAD;id": "x"}),
    ("engine_env", {"SLURM_JOB_ID": "1"}),
    ("engine_env", {"VLLM_API_KEY": "x"}),
    ("engine_env", {"HF_HOME": "/a\nb"}),
    ("engine_command", []),
    ("engine_command", ["python3", "a\nb"]),
    ("job_name_prefix", "x;y-"),
    ("helper_python", "python3; id"),
    ("time_min_min", 90),  # longer than the limit
    ("signal_lead_s", 3600),  # not shorter than --time-min
    ("gpus_per_node", -1),
    ("nodes", 0),
]


@pytest.mark.parametrize(("field", "value"), HOSTILE, ids=[f"{f}={v!r}"[:60] for f, v in HOSTILE])
def test_hostile_values_are_rejected(field: str, value: Any) -> None:
    with pytest.raises(ScriptValidationError):
        JobSpec.parse(_spec(**{field: value}))


@pytest.mark.parametrize(("field", "value"), HOSTILE[:60], ids=[f"{f}={v!r}"[:60] for f, v in HOSTILE[:60]])
def test_render_revalidates_specs_that_skipped_validation(field: str, value: Any) -> None:
    good = JobSpec.parse(_spec())
    bad = JobSpec.model_construct(**{**good.model_dump(), field: value})
    with pytest.raises(ScriptValidationError):
        render_job_script(bad)


def test_admin_lines_are_kept_after_the_header() -> None:
    script = render_job_script(
        JobSpec.parse(_spec(env_setup_lines=["module load cuda/12.4", "source /opt/venvs/vllm/bin/activate"]))
    )
    assert script.index("module load cuda/12.4") > script.index("\nset -u\n")
    assert "source /opt/venvs/vllm/bin/activate" in script


# --- quoting is inert when executed -------------------------------------------------------------

RECORDER = textwrap.dedent(
    """
    import json, os, sys
    keys = ("VLLM_API_KEY", "ENGINE_X", "SLURMLESS_PORT")
    with open(os.environ["RECORD_TO"], "w") as f:
        json.dump({"argv": sys.argv[1:], "env": {k: os.environ.get(k) for k in keys}}, f)
    sys.exit(int(os.environ.get("RECORDER_EXIT", "0")))
    """
)

EVIL_WORDS = [
    "$(touch {d}/p1)",
    "`touch {d}/p2`",
    "a; touch {d}/p3",
    "| touch {d}/p4",
    "'\"$HOME\\",
    "#SBATCH --uid=0",
    "${{IFS}}touch${{IFS}}{d}/p5",
]


def _run_script(script: str, tmp_path: Path, env: dict[str, str], timeout_s: float = 60) -> int:
    path = tmp_path / "job.sh"
    path.write_text(script)
    proc = subprocess.run(
        [BASH, str(path)],
        check=False,
        env={**os.environ, "SLURM_JOB_ID": "4242", **env},
        cwd=tmp_path,
        timeout=timeout_s,
        capture_output=True,
        text=True,
    )
    return proc.returncode


@pytest.mark.parametrize("exit_code", [0, 7])
def test_rendered_script_runs_and_quoting_is_inert(tmp_path: Path, exit_code: int) -> None:
    recorder = tmp_path / "recorder.py"
    recorder.write_text(RECORDER)
    evil = [w.format(d=tmp_path) for w in EVIL_WORDS]
    with CallbackReceiver(TOKEN) as receiver:
        spec = JobSpec.parse(
            _spec(
                callback_url=receiver.url,
                engine_command=[sys.executable, str(recorder), *evil],
                engine_env={"ENGINE_X": evil[0] + evil[1] + evil[2], "RECORD_TO": str(tmp_path / "rec.json")},
                output_dir=str(tmp_path),
                callback_attempts=2,
            )
        )
        rc = _run_script(render_job_script(spec), tmp_path, {"RECORDER_EXIT": str(exit_code)})
        calls = receiver.wait_for(lambda c: len(c) >= 2, timeout_s=10)
    assert rc == exit_code
    assert not list(tmp_path.glob("p[0-9]")), "a hostile word was executed"
    record = json.loads((tmp_path / "rec.json").read_text())
    assert record["argv"][: len(evil)] == evil
    assert record["argv"][len(evil) :][:4] == ["--model", "/models/llama-3.1-8b", "--served-model-name", "llama-3.1-8b"]
    # The engine binds to the address it registers (the node's own), never to every interface.
    assert record["argv"][-4:] == ["--host", calls[0].body["host"], "--port", record["env"]["SLURMLESS_PORT"]]
    assert calls[0].body["host"] not in ("0.0.0.0", "::", "")
    assert record["env"]["VLLM_API_KEY"] == API_KEY
    assert record["env"]["ENGINE_X"] == evil[0] + evil[1] + evil[2]
    register, deregister = calls[0], calls[1]
    assert register.action == "register"
    assert register.body["instance_id"] == "abc123"
    assert register.body["job_id"] == "4242"
    assert register.body["port"] == int(record["env"]["SLURMLESS_PORT"])
    assert register.body["host"]
    assert deregister.action == "deregister"
    assert deregister.body["reason"] == f"engine-exited:{exit_code}"


SLEEPER = textwrap.dedent(
    """
    import os, signal, sys, time
    with open(os.environ["PID_TO"], "w") as f:
        f.write(str(os.getpid()))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        time.sleep(0.2)
    """
)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize(("sig", "reason"), [(signal.SIGUSR1, "walltime-warning"), (signal.SIGTERM, "terminated")])
def test_signal_deregisters_stops_engine_and_exits(tmp_path: Path, sig: signal.Signals, reason: str) -> None:
    sleeper = tmp_path / "sleeper.py"
    sleeper.write_text(SLEEPER)
    pid_file = tmp_path / "engine.pid"
    with CallbackReceiver(TOKEN) as receiver:
        spec = JobSpec.parse(
            _spec(
                callback_url=receiver.url,
                engine_command=[sys.executable, str(sleeper)],
                engine_env={"PID_TO": str(pid_file)},
                output_dir=str(tmp_path),
                settle_s=0,
                kill_grace_s=5,
                signal_lead_s=60,
            )
        )
        path = tmp_path / "job.sh"
        path.write_text(render_job_script(spec))
        proc = subprocess.Popen([BASH, str(path)], env={**os.environ, "SLURM_JOB_ID": "9"}, cwd=tmp_path)
        try:
            assert receiver.wait_for(lambda c: len(c) >= 1, timeout_s=20)[0].action == "register"
            proc.send_signal(sig)
            rc = proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=5)
        calls = receiver.wait_for(lambda c: len(c) >= 2, timeout_s=5)
    assert rc == 0
    assert [c.action for c in calls] == ["register", "deregister"]
    assert calls[1].body == {"instance_id": "abc123", "job_id": "9", "reason": reason}
    engine_pid = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while _pid_alive(engine_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _pid_alive(engine_pid)


def test_refused_registration_stops_the_job(tmp_path: Path) -> None:
    sleeper = tmp_path / "sleeper.py"
    sleeper.write_text(SLEEPER)
    with CallbackReceiver("someone-elses-token-0123456789") as receiver:
        spec = JobSpec.parse(
            _spec(
                callback_url=receiver.url,
                engine_command=[sys.executable, str(sleeper)],
                engine_env={"PID_TO": str(tmp_path / "engine.pid")},
                output_dir=str(tmp_path),
                kill_grace_s=5,
            )
        )
        rc = _run_script(render_job_script(spec), tmp_path, {}, timeout_s=30)
        rejected = receiver.rejected
    assert rc == 1
    assert rejected == 1  # a 401 is final: not retried
    # The registration runs while the engine starts: a refusal may stop it before it wrote its pid.
    pid_file = tmp_path / "engine.pid"
    assert not pid_file.exists() or not _pid_alive(int(pid_file.read_text()))
