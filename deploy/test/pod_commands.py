"""Checks the Kubernetes Indexed Job of deploy/kubernetes/ against the binary and the image.

Usage: pod_commands.py MANIFEST DEXPRESSION_BINARY (run by slurm-ci.sh, with PyYAML from the
kubernetes-validate virtual environment). It runs the pod's command as the pod would (bash -c,
the manifest's environment) for every JOB_COMPLETION_INDEX, with a stand-in `dexpression` first on
PATH that records its arguments, and asserts that index I trains fold I + 1 of `completions` folds
into the shared --out, with paths on the pod's volumes, and that the real binary accepts those
arguments. It also checks that deploy/Containerfile installs the binary under the name the pod
runs, in a folder on the image's PATH, and that the thread count is the CPU limit.
"""

import os
import pathlib
import re
import subprocess
import sys
import tempfile

import yaml


def fail(message):
    sys.exit(f"pod_commands.py: {message}")


def main():
    manifest_path, binary = sys.argv[1], sys.argv[2]
    repo = pathlib.Path(__file__).resolve().parents[2]
    job = yaml.safe_load(pathlib.Path(manifest_path).read_text())
    spec = job["spec"]
    if job["kind"] != "Job" or spec.get("completionMode") != "Indexed":
        fail(f"{manifest_path}: not an Indexed Job")
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    env = {item["name"]: item["value"] for item in container["env"]}
    completions = spec["completions"]
    if str(completions) != env["DEXPRESSION_FOLDS"]:
        fail(f"completions {completions} but DEXPRESSION_FOLDS {env['DEXPRESSION_FOLDS']}")
    if env.get("RAYON_NUM_THREADS") != str(container["resources"]["limits"]["cpu"]):
        fail("RAYON_NUM_THREADS is not the container's CPU limit")
    mounts = [m["mountPath"].rstrip("/") + "/" for m in container["volumeMounts"]]
    for name, value in env.items():
        if value.startswith("/") and not any(value.startswith(m) for m in mounts):
            fail(f"{name}={value} is on none of the pod's volumes {mounts}")

    if container["command"] != ["bash", "-c"] or len(container["args"]) != 1:
        fail("the pod's command is not `bash -c SCRIPT`")
    script = container["args"][0]
    program = re.match(r"\s*(?:exec\s+)?(\S+)", script).group(1)

    # The image: the binary the pod runs, installed in a folder on the runtime stage's PATH.
    containerfile = (repo / "deploy/Containerfile").read_text()
    runtime = containerfile.rsplit("\nFROM ", 1)[1]
    copy = re.search(r"^COPY --from=build (\S+) (\S+)$", runtime, re.M)
    if not copy or pathlib.PurePosixPath(copy.group(2)) != pathlib.PurePosixPath("/usr/local/bin", program):
        fail(f"deploy/Containerfile does not install `{program}` into /usr/local/bin (on Debian's PATH)")
    if '\nENTRYPOINT ["dexpression"]' not in containerfile or "cargo install --locked --path crates/cli" not in containerfile:
        fail("deploy/Containerfile does not install crates/cli's `dexpression` as its entry point")

    with tempfile.TemporaryDirectory() as tmp:
        stand_in = pathlib.Path(tmp, program)
        stand_in.write_text('#!/bin/bash\nprintf "%s\\0" "$@" > "$RECORD"\n')
        stand_in.chmod(0o755)
        for index in range(completions):
            record = pathlib.Path(tmp, f"args-{index}")
            run_env = dict(env, PATH=f"{tmp}:{os.environ['PATH']}", RECORD=str(record),
                           JOB_COMPLETION_INDEX=str(index))
            subprocess.run(container["command"] + [script], env=run_env, check=True)
            args = record.read_bytes().decode().split("\0")[:-1]
            options = dict(zip(args[1::2], args[2::2]))
            expected = {"--fold": str(index + 1), "--folds": str(completions),
                        "--out": env["DEXPRESSION_OUT"], "--cache": env["DEXPRESSION_CACHE"],
                        "--source": env["DEXPRESSION_SOURCE"]}
            if args[0] != "train" or any(options.get(k) != v for k, v in expected.items()):
                fail(f"JOB_COMPLETION_INDEX={index} runs `{program} {' '.join(args)}`, expected {expected}")
            # The real binary parses the same arguments (`--help` after them stops before any work).
            checked = subprocess.run([binary] + args + ["--help"], capture_output=True, text=True)
            if checked.returncode != 0:
                fail(f"`dexpression {' '.join(args)}` is refused: {checked.stderr.strip()}")
    print(f"pod_commands.py: indexes 0-{completions - 1} train folds 1-{completions} "
          f"with {program} from /usr/local/bin")


if __name__ == "__main__":
    main()
