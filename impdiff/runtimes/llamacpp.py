"""llama.cpp as an impdiff runtime (through llama-cpp-python's low-level ctypes API).

llama.cpp runs in a child process (`impdiff.runtimes._llamacpp_worker`, started with
`subprocess`), so that a GGML_ASSERT / abort inside llama.cpp becomes a `RuntimeCrashed` in the
parent instead of killing it. The child's stdout and stderr (llama.cpp's log) go to a log file
whose tail is quoted when the child dies.

Intermediate tensors come from llama.cpp's `cb_eval` scheduler callback. Which graph node is
which canonical tap (`impdiff.taps`) is decided by the rule table below (`BASE_RULES` plus
per-architecture `ARCH_OVERRIDES`): data, not code. A node is matched on

- its llama.cpp name with the `-<layer>` suffix stripped (`None` = a node llama.cpp leaves
  unnamed, `node_<N>` in ggml),
- its ggml op (`ggml_op_name`, e.g. `MUL_MAT`; `None` = any op),
- optionally the names its sources carry (`src=((1, "kqv_out"),)`: src[1] is named `kqv_out-L`),
- optionally ggml's suffix for a derived node (`suffix=" (reshaped)"`: `Qcur-L (reshaped)`, the
  heads-layout RESHAPE of a projection that the model named before reshaping it),

because one llama.cpp name is set on several nodes (`Qcur-L` names the Q projection MUL_MAT,
its RESHAPE to heads and, in most models, the ROPE: only the last name given to a tensor
survives, so the MUL_MAT/RESHAPE keep `Qcur` and the ROPE is renamed `Qcur` after rope), and
some nodes are unnamed (the FLASH_ATTN_EXT result, the attention output projection).
`dims` spells the node's ggml dimensions ne[0], ne[1], ... with T = token, D = head_dim,
H = head, F = features; the worker turns that into the canonical `[T, ...]` layout.

Names that reach the callback but map to no tap are reported in `ChunkOutput.unmapped`
(normalised: layer numbers replaced by `{il}`, unnamed nodes as `<unnamed>`, with the op).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import warnings
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from impdiff.engine.errors import ModelLoadError
from impdiff.runtimes.base import ChunkOutput, Runtime, RuntimeCrashed, RuntimeEvalError
from impdiff.taps import GLOBAL_LAYER, TAPS, TapSelection

# --------------------------------------------------------------------------------------------
# The mapping table
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeRule:
    name: str | None  # llama.cpp cb name without "-<layer>"; None: unnamed node
    op: str | None  # ggml_op_name(); None: any op
    tap: str | None  # canonical tap; None: a known node that is deliberately no tap
    dims: str = "FT"  # ggml dims ne[0], ne[1], ...: T token, D head_dim, H head, F features
    src: tuple[tuple[int, str], ...] = ()  # (i, name): src[i] must be named `name[-L]`
    note: str = ""
    suffix: str = ""  # ggml's suffix of a derived node, e.g. " (reshaped)"; "" = none
    # the model may give this name to several nodes holding the same values in one ubatch
    # (gemma4: V = K's projection, reshaped twice): the first of each ubatch is kept ...
    repeats: bool = False
    also: str | None = None  # ... and where there are two, the second is also this tap


R = NodeRule

BASE_RULES: tuple[NodeRule, ...] = (
    # build_inp_embd: GET_ROWS of tok_embd named "embd" (llama.cpp's own "inp_embd" is the
    # input tensor of the vector-embeddings path, a leaf that never reaches the callback)
    R("embd", "GET_ROWS", "inp_embd"),
    R("inp_scaled", "SCALE", "inp_scaled"),
    R("attn_norm", "MUL", "attn_norm"),
    # build_qkv: MUL_MAT (and ADD with bias) named Qcur, then RESHAPE to heads named Qcur;
    # the RESHAPE holds the final pre-norm/pre-rope values in heads layout.
    R("Qcur", "MUL_MAT", None, note="Q projection before the head split (= Qcur RESHAPE)"),
    R("Kcur", "MUL_MAT", None, note="K projection before the head split (= Kcur RESHAPE)"),
    R("Vcur", "MUL_MAT", None, note="V projection before the head split (= Vcur RESHAPE)"),
    R("Qcur", "ADD", None, note="Q projection + bias before the head split"),
    R("Kcur", "ADD", None, note="K projection + bias before the head split"),
    R("Vcur", "ADD", None, note="V projection + bias before the head split"),
    R("Qcur", "RESHAPE", "Qcur", "DHT"),
    R("Kcur", "RESHAPE", "Kcur", "DHT"),
    R("Vcur", "RESHAPE", "Vcur", "DHT"),
    R("Qcur_normed", "MUL", "Qcur_normed", "DHT"),
    R("Kcur_normed", "MUL", "Kcur_normed", "DHT"),
    # the models call cb(Qcur, "Qcur") after ggml_rope_ext: the ROPE node is renamed Qcur-L
    R("Qcur", "ROPE", "Qcur_pos", "DHT"),
    R("Kcur", "ROPE", "Kcur_pos", "DHT"),
    # build_attn_mha, flash attention on: unnamed FLASH_ATTN_EXT, result ne = [D, H, T]
    R(None, "FLASH_ATTN_EXT", "kqv", "DHT"),
    # flash attention off: kqv = mul_mat(v, softmax(kq)), ne = [D, T, H]
    R("kqv", "MUL_MAT", "kqv", "DTH"),
    # RESHAPE of the FA result, or CONT of the permuted kqv
    R("kqv_out", None, "kqv_out", "FT"),
    # build_attn: wo projection, unnamed (qwen3, gemma3) ...
    R(None, "MUL_MAT", "attn_out", "FT", src=((1, "kqv_out"),)),
    # ... or named attn_out by the model graph (llama)
    R("attn_out", "MUL_MAT", "attn_out"),
    R("attn_post_norm", "MUL", "attn_post_norm"),
    R("ffn_inp", "ADD", "ffn_inp"),
    R("ffn_norm", "MUL", "ffn_norm"),
    R("ffn_gate", "MUL_MAT", "ffn_gate"),
    R("ffn_up", "MUL_MAT", "ffn_up"),
    R("ffn_swiglu", "GLU", "ffn_act"),
    R("ffn_geglu", "GLU", "ffn_act"),
    R("ffn_out", "MUL_MAT", "ffn_out"),
    R("ffn_post_norm", "MUL", "ffn_post_norm"),
    R("l_out", "ADD", "l_out"),
    R("result_norm", "MUL", "result_norm"),
    R("result_output", None, "result_output"),  # MUL_MAT, or SCALE after logit soft-capping
    # build_moe_ffn (every MoE architecture): router logits, probabilities, the top-k expert
    # ids (an I32 VIEW of the ARGSORT named ffn_moe_argsort), the renormalised weights, the sum
    R("ffn_moe_logits", "MUL_MAT", "ffn_moe_logits"),
    R("ffn_moe_probs", "SOFT_MAX", "ffn_moe_probs"),
    R("ffn_moe_topk", "VIEW", "ffn_moe_topk"),
    R("ffn_moe_weights_norm", "DIV", "ffn_moe_weights"),
    R("ffn_moe_out", None, "ffn_moe_out"),  # ADD of the expert slots (CONT for one expert)
)

# Per-architecture rules, tried before BASE_RULES (so they override a base rule with the same
# name/op). An architecture missing here runs on BASE_RULES alone (`known_arch` False).
ARCH_OVERRIDES: dict[str, tuple[NodeRule, ...]] = {
    "llama": (
        # llama names the residual after the FFN "ffn_out" too, but then renames the same
        # tensor "l_out" (build_cvec is the identity without a control vector). If a control
        # vector is loaded the ADD keeps "ffn_out": it is the residual, not the FFN output.
        R("ffn_out", "ADD", None, note="residual after the FFN (renamed l_out without cvec)"),
    ),
    "qwen3": (),
    "gemma3": (
        # gemma3 names the residual after attention sa_out (and never ffn_inp)
        R("sa_out", "ADD", "ffn_inp"),
    ),
    "qwen3moe": (),
    "gemma4": (
        # Q, K and V are named as projections (MUL_MAT) before their reshape to heads: the
        # heads-layout RESHAPE is "<name>-L (reshaped)". Global layers without attn_v use K's
        # projection as V: its MUL_MAT is renamed Vcur and reshaped twice, once for K and once
        # for V (the same values): the pair gives Vcur and Kcur
        R("Qcur", "RESHAPE", "Qcur", "DHT", suffix=" (reshaped)"),
        R("Kcur", "RESHAPE", "Kcur", "DHT", suffix=" (reshaped)"),
        R("Vcur", "RESHAPE", "Vcur", "DHT", suffix=" (reshaped)", repeats=True, also="Kcur"),
        R("Vcur_normed", "RMS_NORM", "Vcur_normed", "DHT"),
        R("Qcur_pos", "ROPE", "Qcur_pos", "DHT"),
        R("Kcur_pos", "ROPE", "Kcur_pos", "DHT"),
        # gemma4 names the residual after attention attn_out (the projection stays unnamed)
        R("attn_out", "ADD", "ffn_inp"),
        # MoE layers: the dense MLP's norm is ffn_norm_1 and its down projection unnamed
        R("ffn_norm_1", "MUL", "ffn_norm"),
        R(None, "MUL_MAT", "ffn_out", src=((1, "ffn_geglu"),)),
        R("ffn_mlp", "MUL", "ffn_mlp"),
        R("ffn_norm_2", "MUL", "ffn_norm_2"),
        R("ffn_moe", "MUL", "ffn_moe"),
        R("ffn_moe_combined", "ADD", "ffn_moe_combined"),
        # the residual after the FFN: pe_in with per-layer embeddings, else an unnamed ADD
        R("pe_in", "ADD", "pe_in"),
        R(None, "ADD", "pe_in", src=((0, "ffn_post_norm"), (1, "attn_out"))),
        R("per_layer_embd_out", "MUL", "per_layer_embd_out"),
        R("inp_per_layer", "SCALE", "inp_per_layer", "DHT"),
        # with layer_output_scale the scaling MUL is named out_scaled, then renamed l_out
        R("l_out", "MUL", "l_out"),
        # the output norm is named h_nextn (for MTP drafts); result_norm is its GET_ROWS of
        # the output rows
        R("h_nextn", "MUL", "result_norm"),
        R("result_norm", "GET_ROWS", None, note="output rows of h_nextn (= result_norm)"),
    ),
}


@dataclass(frozen=True)
class RuleSet:
    arch: str
    known_arch: bool
    by_name: dict[str | None, tuple[NodeRule, ...]]

    def rules(self) -> Iterable[NodeRule]:
        for rules in self.by_name.values():
            yield from rules


def rules_for_arch(arch: str) -> RuleSet:
    ordered = tuple(ARCH_OVERRIDES.get(arch, ())) + BASE_RULES
    by_name: dict[str | None, list[NodeRule]] = {}
    for rule in ordered:
        for tap in (rule.tap, rule.also):
            if tap is not None and tap not in TAPS:
                raise ValueError(f"llama.cpp rule {rule} names unknown canonical tap {tap}")
        by_name.setdefault(rule.name, []).append(rule)
    return RuleSet(arch, arch in ARCH_OVERRIDES, {k: tuple(v) for k, v in by_name.items()})


_SUFFIX_RE = re.compile(r"^(.*?)((?: \([^()]*\))*)$")  # "Qcur-3 (view) (permuted)"
_LAYER_RE = re.compile(r"^(.+)-(\d+)$")
_UNNAMED_RE = re.compile(r"^(node|leaf)_\d+$")
_CACHE_LAYER_RE = re.compile(r"_l(\d+)$")  # cache_k_l5


def parse_name(raw: str) -> tuple[str | None, int | None, str]:
    """'Qcur-3 (view)' -> ('Qcur', 3, ' (view)'); 'node_17' -> (None, None, '');
    'result_norm' -> ('result_norm', None, '')."""
    m = _SUFFIX_RE.match(raw)
    base, suffix = (m.group(1), m.group(2)) if m else (raw, "")
    if not base or _UNNAMED_RE.match(base):
        return None, None, suffix
    lm = _LAYER_RE.match(base)
    if lm:
        return lm.group(1), int(lm.group(2)), suffix
    return base, None, suffix


def layer_hint(raw: str) -> int | None:
    """A layer number carried by a (possibly derived) name: 'Qcur-3 (view)', 'cache_k_l3'."""
    base, layer, _ = parse_name(raw)
    if layer is not None:
        return layer
    if base is not None:
        cm = _CACHE_LAYER_RE.search(base)
        if cm:
            return int(cm.group(1))
    return None


def normalise_name(raw: str, op: str) -> str:
    """Raw node name for the `unmapped` list: layer numbers replaced, op appended."""
    base, layer, suffix = parse_name(raw)
    if base is None:
        text = "<unnamed>" + suffix
    else:
        base = _CACHE_LAYER_RE.sub("_l{il}", base)
        text = base + ("-{il}" if layer is not None else "") + suffix
    return f"{text} [{op}]"


def classify(
    ruleset: RuleSet,
    raw_name: str,
    op: str,
    src_name: Callable[[int], str | None],
    find_layer: Callable[[], int | None],
) -> tuple[NodeRule, int] | None:
    """Match one graph node against the rule table.

    Returns (rule, layer) with layer -1 for global taps, or None when no rule matches (or the
    node is a derived one such as 'Qcur-3 (view)' that no rule's suffix names). `src_name(i)` gives the raw name of
    src[i] (None if absent); `find_layer()` searches the sources for a layer number (used for
    unnamed nodes)."""
    base, layer, suffix = parse_name(raw_name)
    for rule in ruleset.by_name.get(base, ()):
        if rule.suffix != suffix:
            continue
        if rule.op is not None and rule.op != op:
            continue
        ok = True
        src_layer = None
        for i, want in rule.src:
            raw_src = src_name(i)
            if raw_src is None:
                ok = False
                break
            sbase, slayer, ssuffix = parse_name(raw_src)
            if sbase != want or ssuffix:
                ok = False
                break
            if src_layer is None:
                src_layer = slayer
        if not ok:
            continue
        if rule.tap is None:
            return rule, GLOBAL_LAYER if layer is None else layer
        spec = TAPS[rule.tap]
        if spec.per_layer:
            if layer is None:
                layer = src_layer if src_layer is not None else find_layer()
            if layer is None:
                return None  # a per-layer tap whose layer cannot be told: leave unmapped
        else:
            if layer is not None:
                return None
            layer = GLOBAL_LAYER
        return rule, layer
    return None


# --------------------------------------------------------------------------------------------
# The runtime (parent side)
# --------------------------------------------------------------------------------------------

GGML_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "q8_0": 8, "bf16": 30}


def _ggml_type(value: str | int, what: str) -> int:
    if isinstance(value, int):
        return value
    try:
        return GGML_TYPES[value.lower()]
    except KeyError:
        raise ValueError(f"{what}: unknown cache type {value!r}; known: {', '.join(GGML_TYPES)}") from None


EXCHANGE_PREFIX = "impdiff-llamacpp-"  # + "<worker pid>-<eval number>.bin"


def _exchange_dir() -> str:
    """Where the worker writes each chunk's arrays: RAM-backed /dev/shm when it has room."""
    try:
        if shutil.disk_usage("/dev/shm").free > 2 << 30:
            return "/dev/shm"
    except OSError:
        pass
    return tempfile.gettempdir()


def _remove_exchange_files(directory: str, pid: int | None = None) -> None:
    """Remove exchange files of worker `pid`, or (pid None) of workers no longer running: a
    parent that died between the worker's write and its own unlink leaves one behind."""
    pattern = re.compile(re.escape(EXCHANGE_PREFIX) + r"(\d+)-\d+\.bin$")
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        m = pattern.match(name)
        if not m:
            continue
        owner = int(m.group(1))
        if pid is not None:
            if owner != pid:
                continue
        elif Path(f"/proc/{owner}").exists():
            continue
        try:
            os.unlink(os.path.join(directory, name))
        except OSError:
            pass


class LlamaCppRuntime(Runtime):
    """llama.cpp (llama-cpp-python's bundled build) in a child process.

    `taps=None` captures no taps (no eval callback is installed at all: full speed); a
    `TapSelection` captures the canonical taps it wants. `flash_attn=None` keeps llama.cpp's
    default (auto, on for the CPU build). `n_batch` (default max(n_ubatch, 512)) is the largest
    llama_decode; longer evals are split into several llama_decode calls, each of which
    llama.cpp splits into ubatches of `n_ubatch` tokens.
    """

    name = "llama.cpp"

    def __init__(
        self,
        model_path: str | os.PathLike,
        *,
        taps: TapSelection | None = None,
        n_ctx: int = 4096,
        n_ubatch: int = 512,
        n_batch: int | None = None,
        n_threads: int | None = None,
        flash_attn: bool | None = None,
        type_k: str | int = "f16",
        type_v: str | int = "f16",
        n_gpu_layers: int = 0,
    ) -> None:
        self.model_path = Path(model_path)
        self._proc: subprocess.Popen | None = None
        self._conn: Connection | None = None
        self._dead: str | None = None
        self._pos = 0
        self._log_path: str | None = None
        self.last_eval_stats: dict = {}  # worker wall_s / cpu_s of the last eval
        if not self.model_path.is_file():
            raise ModelLoadError(f"{self.model_path}: no such model file")
        if importlib.util.find_spec("llama_cpp") is None:
            raise ImportError("the llama.cpp runtime needs llama-cpp-python: pip install 'impdiff[llamacpp]'")
        self.taps = taps
        cfg = dict(
            model_path=str(self.model_path),
            taps=None if taps is None else (
                None if taps.names is None else sorted(taps.names),
                None if taps.layers is None else sorted(taps.layers),
            ),
            n_ctx=int(n_ctx),
            n_ubatch=int(n_ubatch),
            n_batch=int(n_batch) if n_batch else max(int(n_ubatch), 512),
            n_threads=n_threads,
            flash_attn=flash_attn,
            type_k=_ggml_type(type_k, "type_k"),
            type_v=_ggml_type(type_v, "type_v"),
            n_gpu_layers=int(n_gpu_layers),
            exchange_dir=_exchange_dir(),
        )
        self._exchange_dir = cfg["exchange_dir"]
        _remove_exchange_files(self._exchange_dir)
        self._start(cfg)

    # -- process management -----------------------------------------------------------------

    def _start(self, cfg: dict) -> None:
        fd, self._log_path = tempfile.mkstemp(prefix="impdiff-llamacpp-", suffix=".log")
        parent_sock, child_sock = socket.socketpair()
        env = dict(os.environ)
        env.setdefault("GGML_NO_BACKTRACE", "1")  # ggml_abort would otherwise try to run gdb
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "impdiff.runtimes._llamacpp_worker", str(child_sock.fileno())],
                pass_fds=(child_sock.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=fd,
                stderr=fd,
                env=env,
                close_fds=True,
            )
        finally:
            os.close(fd)
            child_sock.close()
        self._conn = Connection(parent_sock.detach())
        try:
            reply = self._request(("init", cfg), doing="loading the model")
        except RuntimeCrashed:
            # e.g. a GGML_ASSERT on a malformed tensor: still "this file cannot be loaded"
            status = self._dead.split(" while ", 1)[0].split(") ", 1)[-1]
            last = next((" ".join(x.split()) for x in reversed(self._log_tail().splitlines()) if x.strip()), "")
            self.close()
            raise ModelLoadError(
                f"{self.model_path}: llama.cpp crashed while loading this file (worker {status}; last log line: {last})"
            ) from None
        if reply[0] == "load_error":
            reason = self._load_error_reason() or reply[1]
            self.close()
            raise ModelLoadError(f"{self.model_path}: llama.cpp cannot load this file: {reason}")
        if reply[0] != "ready":
            self.close()
            raise RuntimeEvalError(f"llama.cpp worker failed to start: {reply[1]}")
        self.info: dict = reply[1]
        self.arch: str = self.info["arch"]
        self.n_vocab: int = self.info["n_vocab"]
        if self.taps is not None and not self.info["known_arch"]:
            warnings.warn(
                f"llama.cpp arch '{self.arch}' has no entry in ARCH_OVERRIDES: taps are mapped by "
                "the base rules only; check ChunkOutput.unmapped for nodes that need a rule",
                stacklevel=3,
            )

    def _request(self, msg: tuple, *, doing: str):
        if self._dead is not None:
            raise RuntimeCrashed(self._dead)
        if self._conn is None:
            raise RuntimeError("llama.cpp runtime is closed")
        try:
            self._conn.send(msg)
            return self._conn.recv()
        except (EOFError, OSError):
            self._dead = self._crash_message(doing)
            self._cleanup()
            raise RuntimeCrashed(self._dead) from None

    def _crash_message(self, doing: str) -> str:
        rc = None
        if self._proc is not None:
            try:
                rc = self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                rc = self._proc.wait()
        if rc is None:
            status = "exited"
        elif rc < 0:
            try:
                status = f"was killed by signal {signal.Signals(-rc).name} ({-rc})"
            except ValueError:
                status = f"was killed by signal {-rc}"
        else:
            status = f"exited with status {rc}"
        pid = self._proc.pid if self._proc is not None else "?"
        if self._proc is not None:
            _remove_exchange_files(self._exchange_dir, self._proc.pid)  # a half-written chunk
        return (
            f"llama.cpp worker (pid {pid}) {status} while {doing} "
            f"(model {self.model_path}); last lines of its stderr:\n{self._log_tail()}"
        )

    def _log_tail(self, n_lines: int = 25, n_chars: int = 4000) -> str:
        if not self._log_path:
            return "(no log)"
        try:
            with open(self._log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - 64 * 1024))
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return "(log unreadable)"
        lines = text.splitlines()[-n_lines:]
        return "\n".join(lines)[-n_chars:] or "(empty)"

    def _load_error_reason(self) -> str | None:
        """The most telling error line llama.cpp logged, as one line."""
        lines = [" ".join(x.split()) for x in self._log_tail(n_lines=80, n_chars=100_000).splitlines()]
        for pick in ("error loading model", "error", "failed"):
            for i, line in enumerate(lines):
                if pick in line.lower():
                    # the GGUF reader says what is wrong with the file a few lines earlier
                    detail = next((x for x in lines[:i] if x.startswith("gguf_")), None)
                    return f"{line} ({detail})" if detail else line
        return None

    def _cleanup(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except OSError:
                pass
            self._conn = None
        if self._proc is not None:
            if self._proc.poll() is None:
                try:
                    self._proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
            self._proc = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def log_path(self) -> str | None:
        return self._log_path

    # -- Runtime interface ------------------------------------------------------------------

    @property
    def position(self) -> int:
        return self._pos

    def eval(self, token_ids: Sequence[int], last_only: bool = False) -> ChunkOutput:
        ids = np.asarray(token_ids, dtype=np.int64).reshape(-1)
        if ids.size == 0:
            raise ValueError("eval: no token ids")
        bad = ids[(ids < 0) | (ids >= self.n_vocab)]
        if bad.size:
            raise ValueError(f"eval: token id {int(bad[0])} is outside the vocabulary [0, {self.n_vocab})")
        reply = self._request(
            ("eval", ids.astype(np.int32).tobytes(), last_only),
            doing=f"evaluating {ids.size} tokens at position {self._pos}",
        )
        if reply[0] == "error":
            self._pos = reply[2]
            raise RuntimeEvalError(reply[1])
        return self._assemble(reply[1], last_only)

    def timed(self, kind: str, token_ids: Sequence[int]) -> float:
        """Seconds for llama-bench's "pp" (one prompt) or "tg" (one token at a time) test on
        an empty context, timed inside the worker. Leaves the context empty."""
        reply = self._request(("timed", kind, np.asarray(token_ids, np.int32).tobytes()),
                              doing=f"timing {kind} of {len(token_ids)} tokens")
        self._pos = 0
        if reply[0] == "error":
            raise RuntimeEvalError(reply[1])
        return float(reply[1])

    def _assemble(self, man: dict, last_only: bool = False) -> ChunkOutput:
        # The worker wrote every array of the chunk into one file (see the worker for why).
        # Map it, copy each array out (stitching ubatch pieces by position in the same copy),
        # unlink it. Each returned array owns its memory: dropping a tap frees it.
        path, start, n = man["path"], man["start"], man["n_tokens"]
        try:
            mm = np.memmap(path, dtype=np.uint8, mode="r")
        finally:
            try:
                os.unlink(path)  # the mapping stays valid; the RAM goes with the last reference
            except OSError:
                pass
        try:

            def pieces(entries, buf=mm) -> list[tuple[int, np.ndarray]]:
                out = []
                for pos, off, shape in entries:
                    count = int(np.prod(shape))
                    out.append((pos, np.frombuffer(buf, dtype=np.float32, count=count, offset=off).reshape(shape)))
                return out

            logits = (pieces(man["logits"])[0][1].copy() if last_only
                      else self._stitch(start, n, pieces(man["logits"]), "logits"))
            taps = {key: self._stitch(start, n, pieces(entries), key) for key, entries in man["taps"].items()}
        finally:
            del mm
        self._pos = start + n
        self.last_eval_stats = dict(man.get("stats", {}))
        return ChunkOutput(start=start, logits=logits, taps=taps, unmapped=list(man["unmapped"]))

    @staticmethod
    def _stitch(start: int, n: int, pieces: list[tuple[int, np.ndarray]], what) -> np.ndarray:
        """Place pieces (first position, rows) at their positions; every row exactly once."""
        pieces = sorted(pieces, key=lambda x: x[0])
        expect = start
        for pos, arr in pieces:
            if pos != expect:
                raise RuntimeEvalError(f"llama.cpp: {what}: rows for positions {expect}.. missing or doubled")
            expect += arr.shape[0]
        if expect != start + n:
            raise RuntimeEvalError(f"llama.cpp: {what}: got rows up to position {expect}, expected {start + n}")
        return np.concatenate([a for _, a in pieces], axis=0)  # a copy, also for one piece

    def reset(self) -> None:
        reply = self._request(("reset",), doing="clearing the KV cache")
        if reply[0] != "ok":
            raise RuntimeEvalError(str(reply[1]))
        self._pos = 0

    def close(self) -> None:
        if self._conn is not None and self._dead is None:
            try:
                self._conn.send(("close",))
            except OSError:
                pass
        self._cleanup()
        if self._log_path:
            try:
                os.unlink(self._log_path)
            except OSError:
                pass
            self._log_path = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    # -- test hooks -------------------------------------------------------------------------

    def _abort_for_test(self) -> None:
        """Make the worker call ggml_abort (what a failing GGML_ASSERT does)."""
        self._request(("abort",), doing="running a deliberate ggml_abort")
