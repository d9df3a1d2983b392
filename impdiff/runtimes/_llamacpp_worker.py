"""The child process of `impdiff.runtimes.llamacpp.LlamaCppRuntime`.

Run as `python -m impdiff.runtimes._llamacpp_worker <fd>`, where <fd> is one end of a socket
pair wrapped in a `multiprocessing.connection.Connection`. Its stdout/stderr (llama.cpp's log)
go to a log file the parent quotes when this process dies.

Protocol (parent -> child, child -> parent):
    ("init", cfg)      -> ("ready", info) | ("load_error", msg) | ("error", msg)
    ("eval", int32 ids bytes) -> ("ok", manifest) | ("error", msg, position)
    ("reset",)         -> ("ok", None)
    ("abort",)         -> (the process dies in ggml_abort; test hook)
    ("close",)         -> (exits)

Arrays cross the process boundary through one file per eval in /dev/shm (RAM-backed; temp dir
as fallback), and only a small manifest (offsets, shapes, positions) goes over the socket. Why:
all taps of a 512-token ubatch on a small model are hundreds of MB (gemma3 270M: ~1.3 MB per
token for every tap plus 1 MB of logits). Writing each tap into the file the moment the
callback reads it keeps the child at one tap in memory (no per-eval accumulation), and the
parent does one read of the file instead of pickle -> socket -> unpickle (3-4 copies of every
byte and the whole chunk held in both processes at once).
"""

from __future__ import annotations

try:  # before numpy: a CUDA build of llama.cpp crashes (SIGSEGV) loading any model when
    import llama_cpp  # noqa: F401  numpy's libraries were loaded into the process first
except ImportError:  # the parent imports this module for its helpers without llama.cpp
    pass
import ctypes
import glob
import os
import re
import sys
import time
import traceback
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import as_strided

from impdiff.runtimes.llamacpp import EXCHANGE_PREFIX, classify, layer_hint, normalise_name, rules_for_arch
from impdiff.taps import TAPS, TapSelection

GGML_MAX_DIMS = 4
GGML_MAX_SRC = 10
GGML_MAX_OP_PARAMS = 64
GGML_MAX_NAME = 64
GGML_OBJECT_SIZE = 32  # sizeof(struct ggml_object) in ggml.c: 2 size_t, 1 pointer, enum, pad[4]


class GGMLTensor(ctypes.Structure):
    """Mirror of `struct ggml_tensor` (ggml/include/ggml.h, ggml 0.25.x)."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("buffer", ctypes.c_void_p),
        ("ne", ctypes.c_int64 * GGML_MAX_DIMS),
        ("nb", ctypes.c_size_t * GGML_MAX_DIMS),
        ("op", ctypes.c_int),
        ("op_params", ctypes.c_int32 * (GGML_MAX_OP_PARAMS // 4)),
        ("flags", ctypes.c_int32),
        ("src", ctypes.c_void_p * GGML_MAX_SRC),
        ("view_src", ctypes.c_void_p),
        ("view_offs", ctypes.c_size_t),
        ("data", ctypes.c_void_p),
        ("name", ctypes.c_char * GGML_MAX_NAME),
        ("extra", ctypes.c_void_p),
        ("padding", ctypes.c_char * 8),
    ]


MIRROR_FIELDS = [f[0] for f in GGMLTensor._fields_]


class ggml_init_params(ctypes.Structure):
    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p), ("no_alloc", ctypes.c_bool)]


class LoadError(Exception):
    pass


class WorkerError(Exception):
    pass


def _mapped_library(prefix: str) -> str | None:
    """The path of an already-loaded shared library whose file name starts with `prefix`."""
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.split(maxsplit=5)[-1].strip()
                if os.path.basename(path).startswith(prefix):
                    return path
    except OSError:
        pass
    return None


def _load_ggml_base(lib_dir: Path) -> ctypes.CDLL:
    # The instance libllama already loaded, by its path: a wheel holds copies, not symlinks, so
    # libggml-base.so and libggml-base.so.0 are different files, and opening the other one
    # would put a second ggml, with its own globals, beside the one llama.cpp uses.
    cands = [p for p in [_mapped_library("libggml-base.")] if p] \
        + sorted(glob.glob(str(lib_dir / "libggml-base.so*"))) \
        + sorted(glob.glob(str(lib_dir / "libggml-base.*")))
    if not cands:
        raise WorkerError(f"libggml-base not found in {lib_dir}")
    lib = ctypes.CDLL(cands[0])
    sig = {
        "ggml_nbytes": ([ctypes.c_void_p], ctypes.c_size_t),
        "ggml_op_name": ([ctypes.c_int], ctypes.c_char_p),
        "ggml_type_name": ([ctypes.c_int], ctypes.c_char_p),
        "ggml_backend_tensor_get": ([ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t], None),
        "ggml_tensor_overhead": ([], ctypes.c_size_t),
        "ggml_init": ([ggml_init_params], ctypes.c_void_p),
        "ggml_free": ([ctypes.c_void_p], None),
        "ggml_new_tensor_3d": ([ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64], ctypes.c_void_p),
        "ggml_add": ([ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p], ctypes.c_void_p),
        "ggml_view_2d": ([ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_size_t, ctypes.c_size_t], ctypes.c_void_p),
        "ggml_set_name": ([ctypes.c_void_p, ctypes.c_char_p], ctypes.c_void_p),
    }
    for name, (args, res) in sig.items():
        fn = getattr(lib, name)
        fn.argtypes = args
        fn.restype = res
    return lib


def check_tensor_layout(ggml: ctypes.CDLL, header: Path | None) -> None:
    """Fail clearly if `struct ggml_tensor` is not what GGMLTensor mirrors."""
    problems = []
    size = ctypes.sizeof(GGMLTensor)
    overhead = ggml.ggml_tensor_overhead()
    if overhead != GGML_OBJECT_SIZE + size:
        problems.append(f"ggml_tensor_overhead() = {overhead}, expected {GGML_OBJECT_SIZE} + sizeof mirror {size}")
    if header is not None and header.is_file():
        text = header.read_text(errors="replace")
        m = re.search(r"struct ggml_tensor \{(.*?)\};", text, re.S)
        if not m:
            problems.append(f"{header}: struct ggml_tensor not found")
        else:
            body = re.sub(r"//[^\n]*", "", m.group(1))
            fields = re.findall(r"(\w+)\s*(?:\[[^\]]*\])?\s*;", body)
            if fields != MIRROR_FIELDS:
                problems.append(f"{header}: fields {fields} != mirrored {MIRROR_FIELDS}")
            for macro, val in (("GGML_MAX_DIMS", GGML_MAX_DIMS), ("GGML_MAX_SRC", GGML_MAX_SRC),
                               ("GGML_MAX_OP_PARAMS", GGML_MAX_OP_PARAMS), ("GGML_MAX_NAME", GGML_MAX_NAME)):
                mm = re.search(rf"#\s*define\s+{macro}\s+(\d+)", text)
                if mm and int(mm.group(1)) != val:
                    problems.append(f"{header}: {macro} = {mm.group(1)}, mirror uses {val}")
    # a live probe: build tensors through the API and read them back through the mirror
    ctx = ggml.ggml_init(ggml_init_params(1 << 16, None, True))
    if not ctx:
        problems.append("ggml_init failed for the layout probe")
    else:
        try:
            a = ggml.ggml_new_tensor_3d(ctx, 0, 7, 5, 3)
            b = ggml.ggml_new_tensor_3d(ctx, 0, 7, 5, 3)
            c = ggml.ggml_add(ctx, a, b)
            ggml.ggml_set_name(c, b"impdiff_probe")
            v = ggml.ggml_view_2d(ctx, a, 7, 5, 28, 140)
            A, C, V = (GGMLTensor.from_address(p) for p in (a, c, v))
            checks = [
                ("type", A.type == 0),
                ("ne", list(A.ne) == [7, 5, 3, 1]),
                ("nb", list(A.nb) == [4, 28, 140, 420]),
                ("op", ggml.ggml_op_name(C.op) == b"ADD" and ggml.ggml_op_name(V.op) == b"VIEW"),
                ("src", C.src[0] == a and C.src[1] == b and not any(C.src[2:])),
                ("view_src/view_offs", V.view_src == a and V.view_offs == 140),
                ("name", C.name == b"impdiff_probe"),
                ("data", A.data is None),
            ]
            problems += [f"field {f} does not read back" for f, ok in checks if not ok]
        finally:
            ggml.ggml_free(ctx)
    if problems:
        raise WorkerError(
            "the ctypes mirror of struct ggml_tensor does not match the installed ggml "
            "(update impdiff/runtimes/_llamacpp_worker.py): " + "; ".join(problems)
        )


ELEMENT_TYPES = {"f32": np.float32, "f16": np.float16, "bf16": np.uint16, "i32": np.int32}


def from_ggml_bytes(raw: np.ndarray, tname: str, ne: list[int], nb: list[int]) -> np.ndarray:
    """A tensor's bytes (ggml_nbytes of them, from its data pointer) as numpy with shape
    reversed(ne) and strides reversed(nb): views, permutes and transposes come out right.
    The result may alias `raw` (f32/f16/i32) or be a new float32 array (bf16)."""
    shape = tuple(int(x) for x in reversed(ne))
    strides = tuple(int(x) for x in reversed(nb))
    arr = as_strided(raw.view(ELEMENT_TYPES[tname]), shape=shape, strides=strides)
    if tname == "bf16":
        arr = (arr.astype(np.uint32) << 16).view(np.float32)
    return arr


def to_canonical(arr: np.ndarray, ne: list[int], dims: str, layout: str) -> np.ndarray:
    """ggml-ordered array (numpy shape = reversed ne, 4-D) -> canonical [T, ...] float32."""
    n = len(dims)
    if any(ne[i] != 1 for i in range(n, GGML_MAX_DIMS)):
        raise WorkerError(f"tensor ne={ne} has more dimensions than the rule's dims '{dims}'")
    arr = arr[(0,) * (GGML_MAX_DIMS - n)]
    np_letters = dims[::-1]
    order = [np_letters.index("T")] + [i for i, c in enumerate(np_letters) if c != "T"]
    arr = arr.transpose(order)
    if layout == "heads":
        if arr.ndim != 3:
            raise WorkerError(f"dims '{dims}' cannot give a [T, head, head_dim] tap")
    else:
        arr = arr.reshape(arr.shape[0], -1)
    return np.ascontiguousarray(arr, dtype=np.float32)


class Worker:
    def __init__(self, cfg: dict) -> None:
        import llama_cpp
        from llama_cpp import llama_cpp as L

        self.L = L
        self.cfg = cfg
        pkg = Path(llama_cpp.__file__).parent
        self.ggml = _load_ggml_base(pkg / "lib")
        # the wheel installs the headers next to the package (site-packages/include)
        header = next((h for h in (pkg / "include" / "ggml.h", pkg.parent / "include" / "ggml.h") if h.is_file()), None)
        check_tensor_layout(self.ggml, header)
        self._op_names: dict[int, str] = {}
        self._scratch = np.empty(1 << 20, dtype=np.uint8)
        self._type_names: dict[int, str] = {}

        L.llama_backend_init()
        mp = L.llama_model_default_params()
        mp.n_gpu_layers = cfg["n_gpu_layers"]
        self.model = L.llama_model_load_from_file(cfg["model_path"].encode(), mp)
        if not self.model:
            raise LoadError("llama_model_load_from_file returned NULL")
        self.meta = self._read_meta()
        self.arch = self.meta.get("general.architecture", "?")
        self.rules = rules_for_arch(self.arch)

        taps = cfg["taps"]
        self.selection: TapSelection | None = None
        if taps is not None:
            names, layers = taps
            self.selection = TapSelection(
                None if names is None else frozenset(names), None if layers is None else frozenset(layers)
            )

        cp = L.llama_context_default_params()
        cp.n_ctx = cfg["n_ctx"]
        cp.n_batch = cfg["n_batch"]
        cp.n_ubatch = cfg["n_ubatch"]
        cp.n_seq_max = 1
        if cfg["n_threads"]:
            cp.n_threads = cp.n_threads_batch = int(cfg["n_threads"])
        fa = cfg["flash_attn"]
        cp.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_AUTO if fa is None else (
            L.LLAMA_FLASH_ATTN_TYPE_ENABLED if fa else L.LLAMA_FLASH_ATTN_TYPE_DISABLED)
        cp.type_k = cfg["type_k"]
        cp.type_v = cfg["type_v"]
        cp.no_perf = True
        self._cb_ref = None
        if self.selection is not None:
            # kept referenced for the life of the context: llama.cpp holds the raw pointer
            self._cb_ref = L.ggml_backend_sched_eval_callback(self._callback)
            cp.cb_eval = self._cb_ref
            cp.cb_eval_user_data = None
        self.ctx = L.llama_init_from_model(self.model, cp)
        if not self.ctx:
            raise WorkerError("llama_init_from_model returned NULL (see the log: n_ctx, cache types, memory)")
        self.mem = L.llama_get_memory(self.ctx)
        self.n_ctx = L.llama_n_ctx(self.ctx)
        self.n_batch = L.llama_n_batch(self.ctx)
        self.n_ubatch = L.llama_n_ubatch(self.ctx)
        self.n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(self.model))

        self.batch = L.llama_batch_init(self.n_batch, 0, 1)
        self.b_token = np.ctypeslib.as_array(self.batch.token, shape=(self.n_batch,))
        self.b_pos = np.ctypeslib.as_array(self.batch.pos, shape=(self.n_batch,))
        np.ctypeslib.as_array(self.batch.n_seq_id, shape=(self.n_batch,))[:] = 1
        # every row out by default: with fewer, llama.cpp drops the last layer's other rows
        self.b_logits = np.ctypeslib.as_array(self.batch.logits, shape=(self.n_batch,))
        for i in range(self.n_batch):
            self.batch.seq_id[i][0] = 0

        self.pos = 0
        self.seq = 0
        self.exchange_dir = cfg["exchange_dir"]
        # per-eval / per-decode state used by the callback
        self.out = None
        self.entries: dict = {}
        self.unmapped: set[str] = set()
        self.pending: dict[int, tuple] = {}
        self.repeated: dict[tuple, list] = {}  # arrivals of `repeats` rules in this decode
        self.counts: dict = {}
        self.ubatches: list[tuple[int, int]] = []
        self.cb_error: str | None = None

        self.info = dict(
            arch=self.arch,
            known_arch=self.rules.known_arch,
            n_vocab=self.n_vocab,
            n_layer=L.llama_model_n_layer(self.model),
            n_embd=L.llama_model_n_embd(self.model),
            n_head=L.llama_model_n_head(self.model),
            n_head_kv=L.llama_model_n_head_kv(self.model),
            n_ctx=self.n_ctx,
            n_batch=self.n_batch,
            n_ubatch=self.n_ubatch,
            meta=self.meta,
            ggml_header=str(header) if header else None,
        )

    # -- helpers ----------------------------------------------------------------------------

    def _read_meta(self) -> dict[str, str]:
        L = self.L
        out = {}
        buf = ctypes.create_string_buffer(4096)
        for i in range(L.llama_model_meta_count(self.model)):
            if L.llama_model_meta_key_by_index(self.model, i, buf, len(buf)) < 0:
                continue
            key = buf.value.decode("utf-8", "replace")
            if L.llama_model_meta_val_str_by_index(self.model, i, buf, len(buf)) < 0:
                continue
            out[key] = buf.value.decode("utf-8", "replace")
        return out

    def op_name(self, op: int) -> str:
        s = self._op_names.get(op)
        if s is None:
            s = self._op_names[op] = (self.ggml.ggml_op_name(op) or b"?").decode()
        return s

    def type_name(self, t: int) -> str:
        s = self._type_names.get(t)
        if s is None:
            s = self._type_names[t] = (self.ggml.ggml_type_name(t) or b"?").decode()
        return s

    @staticmethod
    def _name(ptr: int) -> str:
        return GGMLTensor.from_address(ptr).name.decode("utf-8", "replace")

    def _find_layer(self, T: GGMLTensor) -> int | None:
        """Breadth-first through src[] and view_src for a name that carries a layer."""
        frontier = [p for p in list(T.src) + [T.view_src] if p]
        seen = set()
        for _depth in range(8):
            nxt = []
            for p in frontier:
                if p in seen:
                    continue
                seen.add(p)
                hint = layer_hint(self._name(p))
                if hint is not None:
                    return hint
                S = GGMLTensor.from_address(p)
                nxt += [q for q in list(S.src) + [S.view_src] if q]
            frontier = nxt
            if not frontier or len(seen) > 256:
                break
        return None

    def _read(self, ptr: int, T: GGMLTensor) -> np.ndarray:
        """The tensor as a numpy array of shape reversed(ne) (views, strides honoured)."""
        tname = self.type_name(T.type)
        if tname not in ELEMENT_TYPES:
            raise WorkerError(f"tensor '{T.name.decode()}' has type {tname}, which taps cannot read")
        nbytes = self.ggml.ggml_nbytes(ptr)
        if self._scratch.nbytes < nbytes:  # reused: no fresh pages (and page faults) per tap
            self._scratch = np.empty(max(nbytes, 2 * self._scratch.nbytes), dtype=np.uint8)
        raw = self._scratch[:nbytes]
        self.ggml.ggml_backend_tensor_get(ptr, raw.ctypes.data, 0, nbytes)
        return from_ggml_bytes(raw, tname, list(T.ne), list(T.nb))

    def _write(self, arr: np.ndarray) -> int:
        off = self.out.tell()
        pad = (-off) % 64
        if pad:
            self.out.write(b"\0" * pad)
            off += pad
        self.out.write(np.ascontiguousarray(arr).data)
        return off

    # -- the eval callback --------------------------------------------------------------------

    def _callback(self, t, ask, _user_data):
        try:
            if ask:
                return self._ask(t)
            self._collect(t)
            return True
        except BaseException:  # never let an exception unwind into C
            if self.cb_error is None:
                self.cb_error = traceback.format_exc()
            return not ask  # ask: don't want it; collect: keep computing, error reported after

    def _ask(self, t: int) -> bool:
        T = GGMLTensor.from_address(t)
        raw = T.name.decode("utf-8", "replace")
        op = self.op_name(T.op)
        hit = classify(
            self.rules,
            raw,
            op,
            lambda i: self._name(T.src[i]) if i < GGML_MAX_SRC and T.src[i] else None,
            lambda: self._find_layer(T),
        )
        if hit is None or hit[0].tap is None:
            self.unmapped.add(normalise_name(raw, op))
            return False
        rule, layer = hit
        if not self.selection.wants(rule.tap, layer):
            return False
        self.pending[t] = (rule, layer)
        return True

    def _collect(self, t: int) -> None:
        rule, layer = self.pending.pop(t)
        T = GGMLTensor.from_address(t)
        key = (rule.tap, layer)
        if rule.repeats:  # placed by _place_repeats once the decode shows how many per ubatch
            arr = to_canonical(self._read(t, T), list(T.ne), rule.dims, TAPS[rule.tap].layout)
            self.repeated.setdefault(key, (rule, []))[1].append((self._write(arr), arr.shape))
            return
        j = self.counts.get(key, 0)
        self.counts[key] = j + 1
        if j >= len(self.ubatches):
            raise WorkerError(f"tap {key} arrived more than once per ubatch: its rule is ambiguous for arch {self.arch}")
        p0, plen = self.ubatches[j]
        if rule.op == "ROPE" and T.src[1]:
            # llama.cpp splits one sequence into consecutive ubatches (split_simple); the rope's
            # position input confirms the positions the rows are stitched at
            pos = self._read(T.src[1], GGMLTensor.from_address(T.src[1])).reshape(-1)[:plen]
            if not np.array_equal(pos, np.arange(p0, p0 + plen)):
                raise WorkerError(f"tap {key}: ubatch {j} holds positions {pos[:4]}..., expected {p0}..")
        # may alias the scratch buffer: written out before the next _read
        arr = to_canonical(self._read(t, T), list(T.ne), rule.dims, TAPS[rule.tap].layout)
        if arr.shape[0] != plen:
            raise WorkerError(f"tap {key}: {arr.shape[0]} rows, but ubatch {j} has {plen} tokens")
        self.entries.setdefault(key, []).append((p0, self._write(arr), arr.shape))

    def _place_repeats(self) -> None:
        """Nodes of a `repeats` rule arrive m times per ubatch with the same values (m per key,
        the same in every ubatch): keep the first of each ubatch, and with m == 2 the second as
        the rule's `also` tap."""
        n_ub = len(self.ubatches)
        for key, (rule, arrivals) in self.repeated.items():
            if len(arrivals) % n_ub:
                raise WorkerError(f"tap {key}: {len(arrivals)} nodes over {n_ub} ubatches")
            m = len(arrivals) // n_ub
            keys = [key] + ([(rule.also, key[1])] if rule.also and m == 2 and
                            self.selection.wants(rule.also, key[1]) else [])
            for j, (p0, plen) in enumerate(self.ubatches):
                for r, k in enumerate(keys):
                    off, shape = arrivals[j * m + r]
                    if shape[0] != plen:
                        raise WorkerError(f"tap {k}: {shape[0]} rows, but ubatch {j} has {plen} tokens")
                    self.entries.setdefault(k, []).append((p0, off, shape))
            for k in keys:
                self.counts[k] = n_ub
        self.repeated = {}

    # -- requests -------------------------------------------------------------------------------

    def eval(self, ids_bytes: bytes, last_only: bool = False):
        L = self.L
        ids = np.frombuffer(ids_bytes, dtype=np.int32)
        n, start = len(ids), self.pos
        if start + n > self.n_ctx:
            return ("error", f"llama.cpp: {n} tokens at position {start} exceed n_ctx={self.n_ctx}", self.pos)
        self.seq += 1
        t_wall, t_cpu = time.perf_counter(), time.process_time()
        path = os.path.join(self.exchange_dir, f"{EXCHANGE_PREFIX}{os.getpid()}-{self.seq}.bin")
        self.out = open(path, "wb")
        self.entries, self.unmapped, logits = {}, set(), []
        try:
            for b0 in range(0, n, self.n_batch):
                m = min(self.n_batch, n - b0)
                p0 = start + b0
                self.ubatches = [(p0 + k, min(self.n_ubatch, m - k)) for k in range(0, m, self.n_ubatch)]
                self.counts, self.pending, self.cb_error, self.repeated = {}, {}, None, {}
                self.b_token[:m] = ids[b0 : b0 + m]
                self.b_pos[:m] = np.arange(p0, p0 + m, dtype=np.int32)
                self.batch.n_tokens = m
                # last_only: one output row, and none at all for the batches before the last
                self.b_logits[:m] = 0 if last_only else 1
                if last_only and b0 + m == n:
                    self.b_logits[m - 1] = 1
                rc = L.llama_decode(self.ctx, self.batch)
                if rc != 0:
                    raise WorkerError(f"llama_decode returned {rc} for {m} tokens at position {p0} (see its log)")
                if self.cb_error:
                    raise WorkerError(f"reading taps failed:\n{self.cb_error}")
                self._place_repeats()
                short = {k: c for k, c in self.counts.items() if c != len(self.ubatches)}
                if short:
                    raise WorkerError(f"taps seen in only some of {len(self.ubatches)} ubatches: {short}")
                rows = int(self.b_logits[:m].sum())
                if rows:
                    lg = np.ctypeslib.as_array(L.llama_get_logits(self.ctx), shape=(rows, self.n_vocab))
                    logits.append((p0 + m - rows, self._write(lg), (rows, self.n_vocab)))
                self.pos = p0 + m
            self.out.close()
        except Exception as e:
            self.out.close()
            os.unlink(path)
            self.pos = int(L.llama_memory_seq_pos_max(self.mem, 0)) + 1
            return ("error", str(e), self.pos)
        finally:
            self.out = None
        manifest = dict(
            path=path,
            start=start,
            n_tokens=n,
            logits=logits,
            taps=self.entries,
            unmapped=sorted(self.unmapped),
            # wall and CPU (all threads) seconds of this eval inside the worker
            stats=dict(wall_s=time.perf_counter() - t_wall, cpu_s=time.process_time() - t_cpu),
        )
        return ("ok", manifest)

    def reset(self):
        self.L.llama_memory_clear(self.mem, True)
        self.pos = 0
        return ("ok", None)

    def timed(self, kind: str, ids_bytes: bytes):
        """llama-bench's pp / tg tests, timed here so no request crosses the process boundary
        per token: "pp" decodes the ids as one prompt on an empty context (last logits only);
        "tg" decodes them one at a time, synchronising after each, as llama-bench does."""
        L = self.L
        ids = np.frombuffer(ids_bytes, dtype=np.int32)
        if len(ids) > self.n_ctx or (kind == "pp" and len(ids) > self.n_batch):
            return ("error", f"llama.cpp: {len(ids)} tokens exceed n_ctx/n_batch", self.pos)
        L.llama_memory_clear(self.mem, True)
        chunks = [ids] if kind == "pp" else [ids[i:i + 1] for i in range(len(ids))]
        t0 = time.perf_counter()
        p0 = 0
        for chunk in chunks:
            m = len(chunk)
            self.b_token[:m] = chunk
            self.b_pos[:m] = np.arange(p0, p0 + m, dtype=np.int32)
            self.b_logits[:m] = 0
            self.b_logits[m - 1] = 1
            self.batch.n_tokens = m
            if L.llama_decode(self.ctx, self.batch) != 0:
                return ("error", f"llama_decode failed at position {p0}", self.pos)
            L.llama_synchronize(self.ctx)
            p0 += m
        seconds = time.perf_counter() - t0
        L.llama_memory_clear(self.mem, True)
        self.pos = 0
        return ("ok", seconds)

    def abort(self):
        fn = self.ggml.ggml_abort
        fn.restype = None
        fn(b"impdiff/runtimes/_llamacpp_worker.py", 0, b"%s", b"deliberate ggml_abort requested by the parent (test hook)")

    def close(self):
        L = self.L
        L.llama_batch_free(self.batch)
        L.llama_free(self.ctx)
        L.llama_model_free(self.model)


def main(argv: list[str]) -> int:
    conn = Connection(int(argv[1]))
    try:
        msg = conn.recv()
    except EOFError:
        return 0
    if msg[0] != "init":
        return 2
    try:
        worker = Worker(msg[1])
    except LoadError as e:
        conn.send(("load_error", str(e)))
        return 1
    except Exception as e:
        traceback.print_exc()
        conn.send(("error", f"{type(e).__name__}: {e}"))
        return 1
    conn.send(("ready", worker.info))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            break
        kind = msg[0]
        if kind == "eval":
            conn.send(worker.eval(*msg[1:]))
        elif kind == "reset":
            conn.send(worker.reset())
        elif kind == "timed":
            conn.send(worker.timed(*msg[1:]))
        elif kind == "abort":
            worker.abort()
        elif kind == "close":
            break
        else:
            conn.send(("error", f"unknown request {kind!r}", worker.pos))
    worker.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
