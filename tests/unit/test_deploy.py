"""The deployment files: the Dockerfile and the Kubernetes example (configs/k8s/). No cluster
and no docker daemon needed: the manifests are parsed and checked against KubeRay's RayJob
fields, the Dockerfile, the README and the real argument parser; the launcher's shell commands
run for real against a local output. With a docker daemon and VIVIT_BATCH_DOCKER_BUILD=1 the
CPU image is built too (that downloads from PyPI, so it is never on by default)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from tests.helpers.deploy import (
    CRONJOB,
    LAUNCHER,
    ROOT,
    VERSION,
    documents,
    lock_check_command,
    one,
)
from vivit_batch.cli import build_parser
from vivit_batch.config import load_config
from vivit_batch.errors import EXIT_LOCK_HELD

DOCKERFILE = (ROOT / "Dockerfile").read_text()
README = (ROOT / "README.md").read_text()
GPU = "nvidia.com/gpu"

# The fields of KubeRay's ray.io/v1 types (ray-operator/apis/ray/v1/raycluster_types.go and
# rayjob_types.go): a misspelt field is silently dropped by the API server.
RAYJOB_FIELDS = {
    "activeDeadlineSeconds", "backoffLimit", "rayClusterSpec", "submitterPodTemplate",
    "metadata", "clusterSelector", "submitterConfig", "managedBy", "deletionStrategy",
    "entrypoint", "runtimeEnvYAML", "jobId", "submissionMode", "entrypointResources",
    "entrypointNumCpus", "entrypointNumGpus", "ttlSecondsAfterFinished",
    "shutdownAfterJobFinishes", "suspend", "schedule",
}  # fmt: skip
CLUSTER_FIELDS = {
    "headGroupSpec", "workerGroupSpecs", "rayVersion", "enableInTreeAutoscaling",
    "autoscalerOptions", "headServiceAnnotations", "suspend",
}  # fmt: skip
HEAD_FIELDS = {"serviceType", "headService", "enableIngress", "rayStartParams", "template"}
WORKER_FIELDS = {
    "groupName", "replicas", "minReplicas", "maxReplicas", "numOfHosts", "rayStartParams",
    "template", "scaleStrategy",
}  # fmt: skip


RAYJOB = one("rayjob.yaml", "RayJob")


def ray_groups() -> dict[str, dict]:
    """Pod spec of the head and of each worker group, by group name."""
    cluster = RAYJOB["spec"]["rayClusterSpec"]
    groups = {"head": cluster["headGroupSpec"]["template"]["spec"]}
    for group in cluster["workerGroupSpecs"]:
        groups[group["groupName"]] = group["template"]["spec"]
    return groups


def documented_tags() -> dict[str, list[str]]:
    """The Dockerfile's documented `docker build` lines: tag -> the line's arguments."""
    builds = [
        shlex.split(line) for line in re.findall(r"^#\s+(docker build .*)$", DOCKERFILE, re.M)
    ]
    return {b[b.index("-t") + 1]: b for b in builds}


def entrypoint() -> list[str]:
    return shlex.split(RAYJOB["spec"]["entrypoint"])


def test_manifests_are_kinds_kubernetes_and_kuberay_know_with_their_field_names():
    names = ("rayjob.yaml", "cronjob.yaml", "hf-cache.yaml")
    kinds = {(d["apiVersion"], d["kind"]) for name in names for d in documents(name)}
    assert kinds == {
        ("ray.io/v1", "RayJob"),
        ("batch/v1", "CronJob"),
        ("v1", "ServiceAccount"),
        ("rbac.authorization.k8s.io/v1", "Role"),
        ("rbac.authorization.k8s.io/v1", "RoleBinding"),
        ("v1", "PersistentVolumeClaim"),
    }
    assert documents("rayjob.yaml") == [RAYJOB]  # the ConfigMap holds the RayJob only
    spec = RAYJOB["spec"]
    assert set(spec) <= RAYJOB_FIELDS
    assert set(spec["rayClusterSpec"]) <= CLUSTER_FIELDS
    assert set(spec["rayClusterSpec"]["headGroupSpec"]) <= HEAD_FIELDS
    for group in spec["rayClusterSpec"]["workerGroupSpecs"]:
        assert set(group) <= WORKER_FIELDS
    ray_pin = re.search(r"^ray==(\S+)$", (ROOT / "constraints.txt").read_text(), re.M)
    assert ray_pin and spec["rayClusterSpec"]["rayVersion"] == ray_pin[1]


def test_every_ray_pod_mounts_the_hugging_face_cache_at_hf_home():
    claim = one("hf-cache.yaml", "PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]  # pods on many nodes at once
    [image_hf_home] = re.findall(r"HF_HOME=(\S+)", DOCKERFILE)
    groups = ray_groups()
    assert set(groups) == {"head", "decode-cpu", "infer-gpu"}
    for name, pod in groups.items():
        volumes = {v["name"]: v for v in pod["volumes"]}
        [container] = pod["containers"]
        hf_home = {e["name"]: e["value"] for e in container["env"]}["HF_HOME"]
        cache = [
            m
            for m in container["volumeMounts"]
            if volumes[m["name"]].get("persistentVolumeClaim", {}).get("claimName")
            == claim["metadata"]["name"]
        ]
        assert [m["mountPath"] for m in cache] == [hf_home] == [image_hf_home], name
        assert pod["securityContext"]["fsGroup"] == 1000  # the image's user, to write it
        refs = [e["secretRef"]["name"] for e in container["envFrom"]]
        assert "vivit-batch-s3" in refs, name


def test_a_run_has_a_deadline_within_the_night_and_frees_its_gpus():
    spec = RAYJOB["spec"]
    assert 0 < spec["activeDeadlineSeconds"] < 24 * 3600  # the CronJob runs daily
    assert CRONJOB["spec"]["schedule"].split()[2:] == ["*", "*", "*"]
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] <= 600
    assert spec["backoffLimit"] == 0
    cron = CRONJOB["spec"]
    assert cron["concurrencyPolicy"] == "Forbid" and cron["startingDeadlineSeconds"] > 0
    launcher_deadline = cron["jobTemplate"]["spec"]["activeDeadlineSeconds"]
    stale_after = load_config().run.lock_stale_after_s
    assert launcher_deadline > stale_after  # the lock check may watch a lock that long


def test_only_the_gpu_group_asks_for_gpus_and_it_runs_the_cuda_image():
    for name, pod in ray_groups().items():
        [container] = pod["containers"]
        limits = container["resources"]["limits"]
        if name == "infer-gpu":
            assert limits[GPU] == container["resources"]["requests"][GPU] == "1"
            assert container["image"].endswith(f"/vivit-batch:{VERSION}-cuda")
            assert any(t["key"] == GPU for t in pod["tolerations"])
        else:
            assert GPU not in limits
            assert container["image"].endswith(f"/vivit-batch:{VERSION}")


def build_args(build: list[str]) -> dict[str, str]:
    """A `docker build` line's `--build-arg NAME=VALUE`s."""
    given = [build[i + 1] for i, word in enumerate(build) if word == "--build-arg"]
    return dict(arg.split("=", 1) for arg in given)


def test_images_are_the_dockerfiles_documented_tags_for_this_version():
    tags = documented_tags()
    assert set(tags) == {f"vivit-batch:{VERSION}", f"vivit-batch:{VERSION}-cuda"}
    [default_index] = re.findall(r"^ARG TORCH_INDEX=(\S+)$", DOCKERFILE, re.M)
    assert default_index == "https://download.pytorch.org/whl/cpu"
    assert build_args(tags[f"vivit-batch:{VERSION}"]) == {}
    cuda = build_args(tags[f"vivit-batch:{VERSION}-cuda"])
    assert re.fullmatch(r"https://download\.pytorch\.org/whl/cu\d+", cuda["TORCH_INDEX"])
    images = [c["image"] for pod in ray_groups().values() for c in pod["containers"]]
    images += [c["image"] for c in LAUNCHER["initContainers"]]
    assert {image.rsplit("/", 1)[-1] for image in images} == set(tags)


def test_the_entrypoint_is_a_vivit_batch_run_whose_flags_parse():
    command = entrypoint()
    assert command[:2] == ["vivit-batch", "run"]
    args = build_parser().parse_args(command[1:])
    assert args.handler.__name__ == "run_command"
    assert args.manifest and args.output and args.model
    config_file = Path(args.config)
    assert config_file.is_absolute() and config_file.parts[:3] == ("/", "app", "configs")
    assert re.search(r"^WORKDIR /app$", DOCKERFILE, re.M)
    config = load_config(ROOT / config_file.relative_to("/app"), args.set)
    assert config.output.partition_by == "run_date"
    # The run stops itself, commits and releases its lock well before KubeRay deletes its
    # cluster without a word to it.
    margin = RAYJOB["spec"]["activeDeadlineSeconds"] - config.run.time_limit_s
    assert margin >= 15 * 60


def test_the_cronjob_checks_the_lock_of_the_runs_output_before_kubectl_create():
    env, script = lock_check_command()
    [check_line] = [s for s in script.split(";") if "vivit-batch lock" in s]
    argv = [env.get(a[1:], a) if a.startswith("$") else a for a in shlex.split(check_line)]
    args = build_parser().parse_args(argv[1:])
    run = build_parser().parse_args(entrypoint()[1:])
    assert args.handler.__name__ == "lock_command"
    assert (args.output, args.config) == (run.output, run.config)
    assert f"-eq {EXIT_LOCK_HELD}" in script
    [launch] = LAUNCHER["containers"]
    assert "kubectl create -f /specs/rayjob.yaml" in launch["command"][2]
    assert f"= {EXIT_LOCK_HELD} ]; then" in launch["command"][2]
    specs = {v["name"]: v for v in LAUNCHER["volumes"]}["specs"]
    assert specs["configMap"]["name"] == "vivit-batch-rayjob"
    account = one("cronjob.yaml", "ServiceAccount")["metadata"]["name"]
    assert LAUNCHER["serviceAccountName"] == account
    [rule] = one("cronjob.yaml", "Role")["rules"]
    assert (rule["apiGroups"], rule["resources"]) == (["ray.io"], ["rayjobs"])
    assert rule["verbs"] == ["create"]


def pip_installs(text: str, variables: dict[str, str]) -> list[tuple]:
    """Each `pip install` command: (index URL, constraints file, packages), options that do not
    change what is installed (-q, --no-cache-dir) left out and -e . counted as ."""
    installs = []
    for match in re.finditer(r"pip install((?:[^\n&;\\]|\\\n)+)", text):
        words = shlex.split(match[1].replace("\\\n", " "))
        words = [re.sub(r"\$\{?(\w+)\}?", lambda m: variables[m[1]], w) for w in words]
        options = {"--index-url": None, "-c": None}
        packages = []
        while words:
            word = words.pop(0)
            if word in options:
                options[word] = words.pop(0)
            elif word not in ("-q", "--no-cache-dir", "-e"):
                packages.append(word)
        installs.append((options["--index-url"], options["-c"], tuple(sorted(packages))))
    return installs


def test_the_dockerfile_installs_as_the_readme_says():
    variables = dict(re.findall(r"^ARG (\w+)=(\S+)$", DOCKERFILE, re.M))
    image = pip_installs(DOCKERFILE, variables)
    code_blocks = "\n".join(re.findall(r"^```(?:bash|sh)\n(.*?)^```", README, re.M | re.S))
    documented = pip_installs(code_blocks, {})
    assert len(image) == 2 and all(install in documented for install in image)
    [torch] = [i for i in image if i[2] == ("torch",)]
    [project] = [i for i in image if ".[nvdec]" in i[2]]  # with NVDEC: both images, below
    setup = [i for i in documented if i[2] == (".",)]  # the README's set-up install
    assert setup and {i[1] for i in setup} == {torch[1]} == {project[1]} == {"constraints.txt"}


def test_the_images_can_decode_on_nvdec():
    """PyNvVideoCodec in both images (the driver, on the CPU head, plans NVDEC decode actors
    only where it finds it) and the driver's video libraries asked for, which it loads."""
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r"^nvdec = \[", pyproject, re.M)
    assert re.search(r"^RUN pip install .*'\.\[nvdec\]'", DOCKERFILE, re.M)
    [capabilities] = re.findall(r"NVIDIA_DRIVER_CAPABILITIES=(\S+)", DOCKERFILE)
    assert set(capabilities.split(",")) == {"compute", "utility", "video"}
    copied = re.findall(r"^COPY (.+) \S+$", DOCKERFILE, re.M)
    kept = re.findall(r"^!(\S+?)/?$", (ROOT / ".dockerignore").read_text(), re.M)
    for source in (s.rstrip("/") for line in copied for s in line.split()):
        assert source in kept and (ROOT / source).exists(), source
