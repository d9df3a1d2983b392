"""Runtime names -> factories, `NAME:MODEL` specs, and runtimes added by other packages.

Wherever impdiff takes a model it also takes a runtime: `engine:x-q4.gguf`,
`llamacpp:gemma3-270m`, `transformers:path/to/hf-dir`, `dump:runs/dump-1`. Built in:

| name           | what it runs                                           | patches | --inject |
|----------------|--------------------------------------------------------|---------|----------|
| `engine`       | impdiff's own PyTorch engine (GGUF, or an HF directory)| yes     | yes      |
| `llamacpp`     | llama.cpp through llama-cpp-python, in a child process | no      | no       |
| `transformers` | HF transformers on a GGUF (dequantised) or HF directory| no      | no       |
| `dump`         | a recorded tap dump (docs/dump-format.md), replayed    | no      | no       |

Other packages add runtimes through the entry-point group `impdiff.runtimes`: the entry
point's name is the runtime name, its object either a `RuntimeFactory` or a callable
`open(target: str, *, taps, n_ctx, n_ubatch, device, **options) -> Runtime`::

    [project.entry-points."impdiff.runtimes"]
    myengine = "myengine.impdiff_plugin:open_runtime"

`patches` is what the diff's substitution check needs (feeding the reference's activation into
the runtime under test); runtimes without it still diff, without that check.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

from ..errors import UsageError
from .base import Runtime

ENTRY_POINT_GROUP = "impdiff.runtimes"


@dataclass(frozen=True)
class RuntimeFactory:
    name: str
    open: Callable[..., Runtime]  # open(target, *, taps, n_ctx, n_ubatch, device, ...)
    doc: str = ""
    label: str = ""  # how reports name it ("llama.cpp"); default: the name
    patches: bool = False  # eval(..., patches=) works: the substitution check can run
    faults: bool = False  # takes faults= (--inject)
    target: str = "model"  # "model": a model name or path (resolve_model); "path": any path

    @property
    def display(self) -> str:
        return self.label or self.name


@dataclass(frozen=True)
class RuntimeSpec:
    runtime: str
    target: str

    def __str__(self) -> str:
        return f"{self.runtime}:{self.target}"

    @property
    def factory(self) -> RuntimeFactory:
        return get_factory(self.runtime)


# -- built-in factories (imports are lazy: torch, llama_cpp, transformers load on use) ---------

def _open_engine(target, *, taps=None, n_ctx=4096, n_ubatch=512, device="cpu", faults=None,
                 loaded=None, **_):
    from ..engine import loader as engine_loader
    from ..engine.faults import FaultSet
    from .engine import EngineRuntime

    faults = faults or FaultSet()
    if loaded is None:
        load = getattr(engine_loader, "load_model", engine_loader.load_gguf_model)
        loaded = load(target, device, faults)
    return EngineRuntime(target, taps=taps, n_ctx=n_ctx, n_ubatch=n_ubatch, loaded=loaded)


def _open_llamacpp(target, *, taps=None, n_ctx=4096, n_ubatch=512, **_):
    from .llamacpp import LlamaCppRuntime

    if Path(target).is_dir():
        raise UsageError(f"llamacpp:{target}: llama.cpp runs GGUF files, not directories (name "
                         "the GGUF of the same weights, e.g. --b llamacpp:x.gguf)")

    return LlamaCppRuntime(target, taps=taps, n_ctx=n_ctx, n_ubatch=n_ubatch)


def _open_transformers(target, *, taps=None, n_ctx=4096, device="cpu", **_):
    from .hf_transformers import TransformersRuntime

    return TransformersRuntime(target, taps=taps, n_ctx=n_ctx, device=device)


def _open_dump(target, *, taps=None, **_):
    from .dump import DumpRuntime

    return DumpRuntime(target, taps=taps)


BUILTIN: dict[str, RuntimeFactory] = {f.name: f for f in (
    RuntimeFactory("engine", _open_engine, "impdiff's PyTorch engine", patches=True,
                   faults=True),
    RuntimeFactory("llamacpp", _open_llamacpp, "llama.cpp (llama-cpp-python)", "llama.cpp"),
    RuntimeFactory("transformers", _open_transformers, "HF transformers (module hooks)"),
    RuntimeFactory("dump", _open_dump, "a recorded tap dump, replayed", target="path"),
)}
ALIASES = {"llama.cpp": "llamacpp", "llama_cpp": "llamacpp", "hf": "transformers"}

_plugins: dict[str, RuntimeFactory] | None = None


def plugins() -> dict[str, RuntimeFactory]:
    """Runtimes other packages registered under the `impdiff.runtimes` entry-point group."""
    global _plugins
    if _plugins is None:
        from importlib.metadata import entry_points

        found: dict[str, RuntimeFactory] = {}
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if ep.name in BUILTIN or ep.name in ALIASES:
                continue  # a plug-in cannot shadow a built-in runtime

            def lazy_open(target, _ep=ep, **options):
                obj = _ep.load()
                fn = obj.open if isinstance(obj, RuntimeFactory) else obj
                return fn(target, **options)

            found[ep.name] = RuntimeFactory(ep.name, lazy_open, f"plug-in {ep.value}",
                                            target="path")
        _plugins = found
    return _plugins


def register(factory: RuntimeFactory) -> None:
    """Register a runtime in this process (tests, notebooks); entry points do it for packages."""
    plugins()[factory.name] = factory


def known() -> dict[str, RuntimeFactory]:
    return {**BUILTIN, **plugins()}


def get_factory(name: str) -> RuntimeFactory:
    name = ALIASES.get(name, name)
    table = known()
    if name not in table:
        raise UsageError(f"unknown runtime '{name}' (known: {', '.join(table)})")
    return table[name]


_NAME_RE = re.compile(r"^[A-Za-z][\w.-]*$")


def parse_spec(text: str, default: str | None = None, what: str = "runtime spec") -> RuntimeSpec:
    """'engine:x.gguf' -> (engine, x.gguf); a bare 'x.gguf' takes `default` as its runtime.

    A prefix before ':' that names no runtime is an error, unless the whole text is an existing
    path (a file name may contain ':')."""
    text = text.strip()
    if ":" in text:
        prefix, rest = text.split(":", 1)
        name = ALIASES.get(prefix, prefix)
        if name in known():
            if not rest:
                raise UsageError(f"{what} '{text}': nothing after '{prefix}:' (expected "
                                 f"{prefix}:MODEL)")
            return RuntimeSpec(name, rest)
        if _NAME_RE.match(prefix) and not Path(text).exists():
            raise UsageError(f"{what} '{text}': unknown runtime '{prefix}' (known: "
                             f"{', '.join(known())})")
    if default is None:
        raise UsageError(f"{what} '{text}': expected RUNTIME:MODEL (runtimes: "
                         f"{', '.join(known())})")
    return RuntimeSpec(get_factory(default).name, text)


def resolve_target(spec: RuntimeSpec) -> Path:
    """The model path a spec names: installed model names resolve for model runtimes."""
    from ..real_models import resolve_model

    if spec.factory.target == "model":
        try:
            return resolve_model(spec.target)
        except UsageError as exc:
            raise UsageError(f"{spec}: {str(exc).split(': ', 1)[-1]}") from None
    path = Path(spec.target)
    if not path.exists():
        raise UsageError(f"{spec}: no such file or directory")
    return path


def open_runtime(spec: RuntimeSpec, *, taps=None, n_ctx: int = 4096, n_ubatch: int = 512,
                 device: str = "cpu", faults=None, **extra) -> Runtime:
    """Open the runtime a spec names. `faults` only for runtimes that take them (the engine);
    `extra` options (e.g. an already `loaded` engine model) go to built-ins that know them."""
    factory = spec.factory
    if faults and not factory.faults:
        raise UsageError(f"--inject applies to engine runtimes; {spec} is {factory.display}")
    target = resolve_target(spec)
    kwargs: dict[str, Any] = dict(taps=taps, n_ctx=n_ctx, n_ubatch=n_ubatch, device=device)
    if factory.faults and faults is not None:
        kwargs["faults"] = faults
    if factory.name in BUILTIN:
        kwargs.update(extra)
    return factory.open(str(target), **kwargs)


# -- what a spec's model is, without running it ----------------------------------------------

@dataclass
class ModelInfo:
    """What the diff needs to know of a side's model before running it: layers, layer kinds,
    vocabulary, the tokenizer (lazily), and for a dump the recorded token ids."""

    spec: RuntimeSpec
    path: Path | None
    arch: str | None = None
    n_layer: int | None = None
    n_vocab: int | None = None
    n_ctx_train: int = 4096
    layer_kinds: dict[int, str] = field(default_factory=dict)
    token_ids: list[int] | None = None
    instruct: bool = False
    _tokenizer: Callable[[], Any] | None = None
    engine_cfg: Any = None

    @cached_property
    def tokenizer(self):
        return self._tokenizer() if self._tokenizer else None

    @property
    def cfg(self):
        """Duck type of the engine's config for `impdiff.prompts.prompt_ids`."""
        if self.engine_cfg is not None:
            return self.engine_cfg
        return SimpleNamespace(n_ctx_train=self.n_ctx_train, n_vocab=self.n_vocab or 0,
                               n_layer=self.n_layer or 0)


def _is_gguf(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"GGUF"
    except OSError:
        return False


def describe(spec: RuntimeSpec) -> ModelInfo:
    from ..real_models import is_instruct

    path = resolve_target(spec)
    info = ModelInfo(spec, path)
    if path.is_file() and _is_gguf(path):
        from ..engine.gguf_file import GGUFFile

        gf = GGUFFile(path)
        info.arch = gf.architecture
        try:
            from ..engine.config import config_from_gguf

            cfg = config_from_gguf(gf)
            info.engine_cfg = cfg
            info.n_layer, info.n_vocab, info.n_ctx_train = cfg.n_layer, cfg.n_vocab, \
                cfg.n_ctx_train
            if cfg.is_swa:
                info.layer_kinds = {i: "sliding attention" if cfg.layer_is_swa(i)
                                    else "global attention" for i in range(cfg.n_layer)}
        except Exception:  # an architecture the engine does not run: plain metadata
            info.n_layer = gf.get(f"{info.arch}.block_count")
            tokens = gf.get("tokenizer.ggml.tokens")
            info.n_vocab = len(tokens) if tokens else None

        def tok(gf=gf):
            from ..engine.tokenizer import Tokenizer

            return Tokenizer.from_gguf(gf)

        info._tokenizer = tok
        info.instruct = is_instruct(path)
    elif path.is_dir() and (path / "manifest.json").exists():
        from .dump import read_manifest

        man = read_manifest(path)
        model = man.get("model") or {}
        info.arch = model.get("arch")
        info.n_layer = model.get("n_layer")
        info.n_vocab = model.get("n_vocab")
        info.layer_kinds = {int(k): v for k, v in (model.get("layer_kinds") or {}).items()}
        info.token_ids = [int(t) for c in man["chunks"] for t in c["token_ids"]]
    elif path.is_dir() and (path / "config.json").exists():
        from .hf_transformers import hf_model_facts

        facts = hf_model_facts(path)
        info.arch, info.n_layer, info.n_vocab = facts["arch"], facts["n_layer"], facts["n_vocab"]
        info.n_ctx_train, info.layer_kinds = facts["n_ctx_train"], facts["layer_kinds"]

        def tok(d=path, n=info.n_vocab):
            try:
                from ..engine.safetensors_loader import load_hf_tokenizer
            except ImportError:
                return None
            try:
                return load_hf_tokenizer(d, n)
            except Exception:  # no tokenizer files: token ids must come from elsewhere
                return None

        info._tokenizer = tok
    return info

