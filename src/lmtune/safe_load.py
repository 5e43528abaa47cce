"""Reading checkpoint files without running code from them.

A PyTorch ``.pt`` file is a pickle, and unpickling calls whatever functions the file names: an
object whose ``__reduce__`` returns ``(os.system, ("...",))`` runs a shell command on load.
fairseq2 0.8.1 reads trainer, optimizer and data-reader state with ``torch.load(weights_only=False)``,
so a run directory someone else can write to was a way to run code as whoever resumed the run.

PyTorch's own weights-only unpickler cannot read those files (fairseq2 writes them with pickle
protocol 5, whose FRAME opcode it refuses), so lmtune unpickles every checkpoint file with an
unpickler whose ``find_class`` (the one way a pickle reaches a function or class) accepts only
the globals that fairseq2's and lmtune's checkpoints hold: ``ALLOWED_GLOBALS`` below, found by
reading the checkpoints of full, LoRA, QLoRA, pretraining, DDP and FSDP runs. Storages are
resolved by torch itself before ``find_class`` is asked. Anything else is refused before it is
called: one sentence naming the file (``UnsafeCheckpointFile``).

Every reader goes through ``load_torch_file``: fairseq2's (``use_safe_tensor_loader`` replaces the
tensor-file loader in its dependency container, for recipes and in-process loading alike) and
lmtune's own (LoRA adapters). The encoded data are ``.npy`` arrays, read with numpy's default
``allow_pickle=False``; early-stopping records and cards are JSON and YAML.

Hugging Face directories run code through transformers when their ``config.json`` or
``tokenizer_config.json`` has an ``auto_map`` and the loader is told ``trust_remote_code=True``
(or a user answers its prompt): ``check_hf_dir`` refuses such a directory before anything loads
it unless its card says ``trust_remote_code: true``, and lmtune's own transformers calls pass
``hf_trust_remote_code(directory)``, False for every other directory.
"""

from __future__ import annotations

import json
import pickle
import types
from pathlib import Path
from typing import Any

from lmtune.errors import UserError

# (module, name) of every global a checkpoint lmtune writes or reads may name; nothing more.
ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset({
    ("collections", "OrderedDict"),  # state dicts
    ("torch._utils", "_rebuild_tensor_v2"),  # every tensor
    # FSDP's optimizer state: DTensors (PyTorch's weights-only unpickler allows these too)
    ("torch._tensor", "_rebuild_from_type_v2"),
    ("torch._utils", "_rebuild_wrapper_subclass"),
    ("torch.serialization", "_get_layout"),
    ("torch", "Size"),
    ("torch", "device"),
    *(("torch", dtype) for dtype in ("float32", "bfloat16", "float16", "float64")),  # a DTensor's dtype
    ("torch.distributed.device_mesh", "DeviceMesh"),
    ("torch.distributed.tensor", "DTensor"),
    ("torch.distributed.tensor._dtensor_spec", "DTensorSpec"),
    ("torch.distributed.tensor._dtensor_spec", "TensorMeta"),
    ("torch.distributed.tensor.placement_types", "Shard"),
})


class UnsafeCheckpointFile(UserError):
    """A checkpoint file names a global outside ``ALLOWED_GLOBALS``."""

    def __init__(self, file: Path | str, name: str) -> None:
        super().__init__(
            f"{file} holds objects lmtune will not unpickle ({name}): lmtune loads only the tensors and plain values "
            "its checkpoints hold, because unpickling anything else could run code from the file; it was not loaded."
        )
        self.file = file


def _restricted_pickle_module(file: Path | str) -> types.ModuleType:
    """A stand-in for the ``pickle`` module that ``torch.load`` unpickles ``file`` with."""

    class RestrictedUnpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            if (module, name) not in ALLOWED_GLOBALS:
                raise UnsafeCheckpointFile(file, f"{module}.{name}")
            return super().find_class(module, name)

    module = types.ModuleType("lmtune_restricted_pickle")
    module.Unpickler = RestrictedUnpickler  # type: ignore[attr-defined]
    module.load = lambda f, **kw: RestrictedUnpickler(f, **kw).load()  # type: ignore[attr-defined]  # torch's pre-zip format
    module.UnpicklingError = pickle.UnpicklingError  # type: ignore[attr-defined]
    return module


def load_torch_file(file: Path | str | Any, *, map_location: Any = "cpu", mmap: bool = False, name: Path | str | None = None) -> Any:
    """``torch.load`` of ``file`` (a path or a binary stream; ``name`` names a stream in errors) that
    refuses any global outside ``ALLOWED_GLOBALS``."""
    import torch

    shown = name if name is not None else file
    return torch.load(file, map_location, pickle_module=_restricted_pickle_module(shown), weights_only=False, mmap=mmap)


def check_checkpoint_objects(checkpoint_dir: Path) -> None:
    """Reads the globals of every file of the checkpoint a rerun resumes from (fairseq2's last step
    with trainer state), memory-mapped so that no weights are read, before anything in OUT is
    written: a planted file is refused with OUT as it was. Damaged files are left to the load."""
    steps = [p for p in checkpoint_dir.glob("step_*") if p.name[5:].isdigit() and (p / "trainer").is_dir()]
    if not steps:
        return
    for file in sorted(max(steps, key=lambda p: int(p.name[5:])).rglob("*.pt")):
        try:
            load_torch_file(file, mmap=True)
        except UnsafeCheckpointFile:
            raise
        except Exception:
            pass


def safe_tensor_file_loader(file_system: Any) -> Any:
    """fairseq2's ``TensorFileLoader``, reading every file with ``load_torch_file`` whatever
    ``restrict`` asks (a card's ``restrict: false`` included)."""
    import io
    from pickle import PickleError

    from fairseq2.io import CorruptFileError, TensorFileLoader, TensorFileLoadOptions

    class SafeTensorFileLoader(TensorFileLoader):
        def load(self, file: Path, options: TensorFileLoadOptions | None = None) -> dict[str, object]:
            options = options or TensorFileLoadOptions()
            try:
                if options.mmap and file_system.is_local_path(file):
                    return load_torch_file(file, map_location=options.map_location, mmap=True)
                stream = io.BytesIO(file_system.cat(file))
                return load_torch_file(stream, map_location=options.map_location, name=file)
            except (RuntimeError, PickleError, EOFError) as ex:
                raise CorruptFileError(file) from ex

    return SafeTensorFileLoader()


def use_safe_tensor_loader(container: Any) -> None:
    """Makes ``container`` (a fairseq2 ``DependencyContainer``) read tensor files with
    ``safe_tensor_file_loader``; nothing to do when it already does. Raises when the container has
    already handed fairseq2's own loader out (its model families would keep it)."""
    from fairseq2.file_system import FileSystem
    from fairseq2.io import TensorFileLoader

    from lmtune.fairseq2_internals import dependency_registration

    registration = dependency_registration(container, TensorFileLoader)
    if getattr(registration.provider, "refuses_unsafe_globals", False) is True:
        return
    if isinstance(registration.obj, TensorFileLoader):
        raise RuntimeError("fairseq2 handed out its tensor-file loader before lmtune.safe_load replaced it")

    def provide(resolver: Any) -> Any:
        return safe_tensor_file_loader(resolver.resolve(FileSystem))

    provide.refuses_unsafe_globals = True  # type: ignore[attr-defined]
    registration.provider = provide


# Where transformers looks for a directory's own code (``auto_map``).
REMOTE_CODE_FILES = ("config.json", "tokenizer_config.json")
_trusted_hf_dirs: set[Path] = set()


def check_hf_dir(directory: Path, *, card: str, trusted: object) -> None:
    """Refuses a Hugging Face directory that names code of its own to run (``auto_map``) unless
    its card ``card`` says ``trust_remote_code: true`` (``trusted``); a trusted one is remembered
    for ``hf_trust_remote_code``."""
    if trusted not in (None, True, False):
        raise UserError(f"card '{card}': trust_remote_code is {trusted!r}; valid: true or false.")
    if trusted is True:
        _trusted_hf_dirs.add(directory.resolve())
        return
    for name in REMOTE_CODE_FILES:
        file = directory / name
        try:
            data = json.loads(file.read_text())
        except (OSError, ValueError):
            continue  # absent or malformed: nothing names code (transformers reports a bad file itself)
        if isinstance(data, dict) and data.get("auto_map"):
            raise UserError(
                f"card '{card}': {file} names code from its directory to run when it loads (auto_map), and lmtune runs "
                "no code from a model or tokenizer directory unless the card says trust_remote_code: true."
            )


def hf_trust_remote_code(directory: Path | str) -> bool:
    """``trust_remote_code`` for transformers' loaders: True only for a directory whose card said so."""
    return Path(directory).resolve() in _trusted_hf_dirs
