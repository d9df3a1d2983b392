"""Text <-> token ids from a GGUF's tokenizer metadata, matching llama.cpp exactly.

The reference for every rule here is llama.cpp's `src/llama-vocab.cpp` (the version vendored by
llama-cpp-python 0.3.36): `llama_vocab::impl::load` (types, special ids, attributes, EOG set),
`tokenizer_st_partition` (special-token splitting), `tokenize` (SPM / BPE sessions),
`token_to_piece` and `detokenize`.

Families:

* ``tokenizer.ggml.model == "llama"`` (SPM, e.g. Gemma 3). llama.cpp merges adjacent symbols
  (initially single UTF-8 characters) whenever their concatenation is a vocabulary entry, highest
  score first (ties: leftmost), and emits ``<0xXX>`` byte tokens for characters that never formed a
  token. That is a BPE whose merges are every split ``(a, b)`` of every vocabulary entry ``a+b``
  with both halves in the vocabulary, ranked by the entry's score; it is built here as a
  HuggingFace ``tokenizers`` BPE model with ``byte_fallback``. Spaces become ``▁`` and a space is
  prefixed (``tokenizer.ggml.add_space_prefix``) to text that starts the input or follows a
  special token, as llama.cpp does.
* ``"gpt2"`` (byte-level BPE, e.g. SmolLM2): merges ranked by their order in
  ``tokenizer.ggml.merges``; text is split first by the regex list llama.cpp uses for the
  ``tokenizer.ggml.pre`` value, then byte-encoded. Built as a ``tokenizers`` BPE with ``Split``
  pre-tokenizers and a ``ByteLevel`` byte mapping.
* ``"gemma4"`` (Gemma 4: SentencePiece-style BPE). Spaces become ``▁`` (no space prefix), the
  text is split into runs of newlines and runs of anything else, a run of newlines that is a
  vocabulary entry is that token, and everything else goes through the ranked merges of
  ``tokenizer.ggml.merges`` on raw UTF-8 characters; a character no merge reached that is not a
  token becomes its ``<0xXX>`` byte tokens. BOS is always added (llama.cpp overrides
  ``add_bos_token=false`` for this family).
* ``"none"`` / ``"no_vocab"`` (synthetic models with only a vocabulary size): ids decode to
  placeholders ``<tok:ID>``; encoding text raises `ModelLoadError`.

Special-token splitting, BOS/EOS insertion, pieces and detokenisation are done here in Python,
following llama.cpp line by line; ``tokenizers`` only runs the merge loop.

Where exact agreement rests on the vocabulary rather than on construction:

* SPM ties. llama.cpp breaks equal scores by position (leftmost); a rank list cannot, so merges
  of equal score are ordered by token id, then split position. This only matters when two
  different mergeable tokens share a score, or two overlapping placements of one token are open
  at once. In Gemma 3 every normal token's score is unique; the shared scores (-1000, 0) belong to
  control/byte tokens that no split can form and to user-defined tokens, which are split out of
  the text before merging.
* Special-token order. llama.cpp sorts special tokens by length with an unstable sort; equal
  lengths are taken by id here. That can only matter for overlapping special texts of equal
  length. When several texts could be the EOT (or a FIM) token, llama.cpp's pick depends on hash
  order; the lowest id is used here (the EOG set is the same either way).
* Character classes. The gpt2-family splits use the Oniguruma classes of ``tokenizers``; llama.cpp
  uses its own Unicode tables, so a codepoint whose category changed between Unicode versions
  could split differently.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from .errors import ModelLoadError

# llama_token_type (GGUF tokenizer.ggml.token_type values)
TOKEN_TYPE_UNDEFINED = 0
TOKEN_TYPE_NORMAL = 1
TOKEN_TYPE_UNKNOWN = 2
TOKEN_TYPE_CONTROL = 3
TOKEN_TYPE_USER_DEFINED = 4
TOKEN_TYPE_UNUSED = 5
TOKEN_TYPE_BYTE = 6

# llama_token_attr bits
ATTR_UNDEFINED = 0
ATTR_UNKNOWN = 1 << 0
ATTR_UNUSED = 1 << 1
ATTR_NORMAL = 1 << 2
ATTR_CONTROL = 1 << 3
ATTR_USER_DEFINED = 1 << 4
ATTR_BYTE = 1 << 5
ATTR_LSTRIP = 1 << 7
ATTR_RSTRIP = 1 << 8

_TYPE_TO_ATTR = {
    TOKEN_TYPE_UNDEFINED: ATTR_UNDEFINED,
    TOKEN_TYPE_NORMAL: ATTR_NORMAL,
    TOKEN_TYPE_UNKNOWN: ATTR_UNKNOWN,
    TOKEN_TYPE_CONTROL: ATTR_CONTROL,
    TOKEN_TYPE_USER_DEFINED: ATTR_USER_DEFINED,
    TOKEN_TYPE_UNUSED: ATTR_UNUSED,
    TOKEN_TYPE_BYTE: ATTR_BYTE,
}

SPACE_MARK = "\u2581"  # ▁, SentencePiece's escaped space
_GEMMA4_SPLIT = re.compile(r"[^\n]+|\n+")
_C_ISSPACE = " \t\n\v\f\r"  # isspace() in the C locale, used by LSTRIP/RSTRIP

# --- pre-tokenizer regexes (copied from llm_tokenizer_bpe's constructor in llama-vocab.cpp) ----

_RE_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
# llama.cpp runs its hand-written matcher for these two (unicode_regex_split_custom_llama3 /
# _qwen2), which implement the original tokenizer.json regexes below.
_RE_LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
              r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_RE_QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
             r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_RE_DEFAULT = [
    r"[\p{P}\$\+<=>\^~\|]+",
    _RE_GPT2,
    r"\p{N}+",
    r"[0-9][0-9][0-9]",
]

# tokenizer.ggml.pre -> (regex list, clean_spaces, ignore_merges, default add_bos).
# Only the pre-tokenizers whose llama.cpp splitting is a plain regex (or a hand-written
# equivalent of one) are listed; "smollm" is the one checked against llama.cpp in the tests.
_BPE_PRE: dict[str, tuple[list[str], bool, bool, bool]] = {}
for _names, _spec in [
    (("default",), (_RE_DEFAULT, True, False, False)),
    (("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2",
      "jina-v5-nano"), ([_RE_LLAMA3], True, True, True)),
    (("qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2"), ([_RE_QWEN2], False, False, False)),
    (("starcoder", "refact", "codeshell"), ([r"\p{N}", _RE_GPT2], True, False, False)),
    (("smollm", "command-r"), ([r"\p{N}", _RE_GPT2], False, False, False)),
    (("gpt-2", "phi-2", "mpt", "olmo"), ([_RE_GPT2], True, False, False)),
]:
    for _n in _names:
        _BPE_PRE[_n] = _spec

# GPT-2 byte <-> unicode mapping (unicode_byte_to_utf8_map in unicode.cpp)
def _byte_encoder() -> dict[int, str]:
    bs = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    enc = {b: chr(b) for b in bs}
    n = 0
    for b in range(256):
        if b not in enc:
            enc[b] = chr(256 + n)
            n += 1
    return enc


_BYTE_ENC = _byte_encoder()
_UNK_SENTINEL = "\x00<impdiff:not-a-token>\x00"
_BYTE_DEC = {c: b for b, c in _BYTE_ENC.items()}

# Texts llama.cpp recognises (llama_vocab::impl::load) when the GGUF does not give the id.
_EOT_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
              "<|end_of_text|>", "<EOT>", "_<EOT>", "[EOT]", "<｜end▁of▁sentence｜>",
              "<end_of_utterance>")
_EOM_TEXTS = ("<|eom_id|>",)
_FIM_PRE_TEXTS = ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>",
                  "▁<PRE>", "<|code_prefix|>", "<|prefix|>")
_FIM_SUF_TEXTS = ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>",
                  "▁<SUF>", "<|code_suffix|>", "<|suffix|>")
_FIM_MID_TEXTS = ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>",
                  "▁<MID>", "<|code_middle|>", "<|middle|>")
_FIM_PAD_TEXTS = ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]")
_FIM_REP_TEXTS = ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>")
_FIM_SEP_TEXTS = ("<|file_sep|>",)
_EOG_TEXTS = frozenset((
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
    "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
    "<｜end▁of▁sentence｜>", "[e~[",
))

_SPECIAL_ID_KEYS = [
    ("bos", "tokenizer.ggml.bos_token_id"),
    ("eos", "tokenizer.ggml.eos_token_id"),
    ("eot", "tokenizer.ggml.eot_token_id"),
    ("eom", "tokenizer.ggml.eom_token_id"),
    ("unk", "tokenizer.ggml.unknown_token_id"),
    ("sep", "tokenizer.ggml.seperator_token_id"),  # sic, llama.cpp's key name
    ("pad", "tokenizer.ggml.padding_token_id"),
    ("mask", "tokenizer.ggml.mask_token_id"),
    ("fim_pre", "tokenizer.ggml.fim_pre_token_id"),
    ("fim_suf", "tokenizer.ggml.fim_suf_token_id"),
    ("fim_mid", "tokenizer.ggml.fim_mid_token_id"),
    ("fim_pad", "tokenizer.ggml.fim_pad_token_id"),
    ("fim_rep", "tokenizer.ggml.fim_rep_token_id"),
    ("fim_sep", "tokenizer.ggml.fim_sep_token_id"),
    # deprecated spellings
    ("fim_pre", "tokenizer.ggml.prefix_token_id"),
    ("fim_suf", "tokenizer.ggml.suffix_token_id"),
    ("fim_mid", "tokenizer.ggml.middle_token_id"),
]


class Tokenizer:
    """A GGUF vocabulary's tokenizer; ids agree with llama.cpp's `llama_tokenize`.

    Attributes: ``bos_id``, ``eos_id`` (None when absent), ``eog_ids`` (end-of-generation ids as
    llama.cpp decides them), ``add_bos`` (whether ``encode(add_special=True)`` prepends BOS),
    ``chat_template`` (the GGUF's Jinja template or None), ``vocab_size``, ``model`` ("llama",
    "gpt2" or "none").
    """

    bos_id: int | None
    eos_id: int | None
    eog_ids: frozenset[int]
    add_bos: bool
    chat_template: str | None
    vocab_size: int

    def __init__(self) -> None:  # use from_gguf
        self.model = "none"
        self.source = "<memory>"
        self.vocab_size = 0
        self.pre: str | None = None  # tokenizer.ggml.pre (gpt2 family)
        self.tokens: list[str] = []
        self.scores: list[float] = []
        self.attrs: list[int] = []
        self.special_ids: dict[str, int | None] = {}
        self.bos_id = None
        self.eos_id = None
        self.eog_ids = frozenset()
        self.add_bos = False
        self.add_eos = False
        self.add_space_prefix = False
        self.clean_spaces = False
        self.chat_template = None
        self._special_cache: list[int] = []  # CONTROL|USER_DEFINED|UNKNOWN ids, longest first
        self._special_index: dict[str, list[int]] = {}
        self._pieces: list[bytes] = []  # token_to_piece(special=True) per id
        self._hf = None  # tokenizers.Tokenizer running the merges
        self._spm_extra: dict[int, str] = {}  # SPM: ids past the vocabulary -> character
        self._byte_ids: list[int | None] = []  # SPM: byte value -> byte token id

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_gguf(cls, gguf_file) -> "Tokenizer":
        """Build the tokenizer from a `GGUFFile`'s ``tokenizer.*`` metadata."""
        self = cls()
        md: dict[str, Any] = gguf_file.metadata
        src = str(getattr(gguf_file, "path", "<gguf>"))
        self.source = src
        model = md.get("tokenizer.ggml.model")
        tmpl = md.get("tokenizer.chat_template")
        self.chat_template = tmpl if isinstance(tmpl, str) else None

        if model is None:
            raise ModelLoadError(f"{src}: metadata key 'tokenizer.ggml.model' is missing "
                                 "(expected 'llama', 'gpt2', 'gemma4' or 'none')")
        if model in ("none", "no_vocab"):
            self.model = "none"
            self.vocab_size = _none_vocab_size(gguf_file)
            return self
        if model not in ("llama", "gpt2", "gemma4"):
            raise ModelLoadError(f"{src}: tokenizer.ggml.model='{model}' is not supported "
                                 "(supported: llama, gpt2, gemma4, none)")
        self.model = model

        tokens = md.get("tokenizer.ggml.tokens")
        if not isinstance(tokens, list) or not tokens:
            raise ModelLoadError(f"{src}: metadata key 'tokenizer.ggml.tokens' is missing or "
                                 "empty (expected the list of token strings)")
        n = len(tokens)
        tokens = [t if t else f"[EMPTY_{i}]" for i, t in enumerate(tokens)]
        token_to_id = {t: i for i, t in enumerate(tokens)}
        if len(token_to_id) != n:
            raise ModelLoadError(f"{src}: tokenizer.ggml.tokens has duplicate entries "
                                 "(expected every token string to be unique)")
        scores = md.get("tokenizer.ggml.scores")
        if scores is not None and (not isinstance(scores, list) or len(scores) < n):
            raise ModelLoadError(f"{src}: tokenizer.ggml.scores has "
                                 f"{len(scores) if isinstance(scores, list) else 'no'} entries, "
                                 f"expected {n}")
        types = md.get("tokenizer.ggml.token_type")
        if types is not None and (not isinstance(types, list) or len(types) < n):
            raise ModelLoadError(f"{src}: tokenizer.ggml.token_type has "
                                 f"{len(types) if isinstance(types, list) else 'no'} entries, "
                                 f"expected {n}")
        self.tokens = tokens
        self.vocab_size = n
        self.scores = [float(s) for s in scores[:n]] if scores is not None else [0.0] * n
        if types is not None:
            self.attrs = [_TYPE_TO_ATTR.get(int(t), ATTR_UNDEFINED) for t in types[:n]]
        else:
            self.attrs = [ATTR_NORMAL] * n

        # --- per-family defaults (llama_vocab::impl::load)
        ignore_merges = False
        regexes: list[str] = []
        if model == "llama":
            sp = {"bos": 1, "eos": 2, "unk": 0}
            self.add_space_prefix = True
            self.clean_spaces = False
            self.add_bos, self.add_eos = True, False
        elif model == "gemma4":  # BPE, no default special ids, tokenizer_pre "gemma4"
            sp = {}
            self.pre = "gemma4"
            self.add_space_prefix = False
            self.clean_spaces = True
            self.add_bos, self.add_eos = False, False
        else:
            sp = {"bos": 11, "eos": 11}
            pre = md.get("tokenizer.ggml.pre") or "default"
            if pre not in _BPE_PRE:
                raise ModelLoadError(
                    f"{src}: tokenizer.ggml.pre='{pre}' is not supported (supported: "
                    f"{', '.join(sorted(_BPE_PRE))})")
            regexes, self.clean_spaces, ignore_merges, self.add_bos = _BPE_PRE[pre]
            self.pre = pre
            self.add_space_prefix = False
            self.add_eos = False
        asp = md.get("tokenizer.ggml.add_space_prefix")
        if asp is not None:
            self.add_space_prefix = bool(asp)

        # --- special token ids
        names = ["bos", "eos", "eot", "eom", "unk", "sep", "pad", "mask",
                 "fim_pre", "fim_suf", "fim_mid", "fim_pad", "fim_rep", "fim_sep"]
        ids: dict[str, int | None] = {k: sp.get(k) for k in names}
        for k in names:
            if ids[k] is not None and ids[k] >= n:
                ids[k] = None
        for k, key in _SPECIAL_ID_KEYS:
            v = md.get(key)
            if v is None:
                continue
            if isinstance(v, int) and 0 <= v < n:
                ids[k] = v
            # else: llama.cpp warns "bad special token" and keeps the default
        for key, attr_name in (("tokenizer.ggml.add_bos_token", "add_bos"),
                               ("tokenizer.ggml.add_eos_token", "add_eos")):
            v = md.get(key)
            if v is not None:
                setattr(self, attr_name, bool(v))
        if model == "gemma4":
            self.add_bos = True  # llama.cpp's "workaround for Gemma 4" (PR 21500)

        attrs = self.attrs
        # auto-detect EOT/EOM/FIM tokens by text. llama.cpp walks an unordered_map, so when a
        # vocabulary holds several candidates the pick is unspecified; the lowest id is used here.
        for k, texts in (("eot", _EOT_TEXTS), ("eom", _EOM_TEXTS), ("fim_pre", _FIM_PRE_TEXTS),
                         ("fim_suf", _FIM_SUF_TEXTS), ("fim_mid", _FIM_MID_TEXTS),
                         ("fim_pad", _FIM_PAD_TEXTS), ("fim_rep", _FIM_REP_TEXTS),
                         ("fim_sep", _FIM_SEP_TEXTS)):
            if ids[k] is not None:
                continue
            found = sorted(token_to_id[t] for t in texts if t in token_to_id)
            if found:
                ids[k] = found[0]
                attrs[found[0]] |= ATTR_CONTROL
        # control tokens whose text says "unused" are unused
        for i, t in enumerate(tokens):
            if attrs[i] & ATTR_CONTROL and "unused" in t:
                attrs[i] |= ATTR_UNUSED
        eog: set[int] = set()
        for k in ("fim_pad", "fim_rep", "fim_sep"):
            if ids[k] is not None:
                eog.add(ids[k])
        for t in _EOG_TEXTS:
            i = token_to_id.get(t)
            if i is not None:
                eog.add(i)
                attrs[i] |= ATTR_CONTROL
        for t in ("<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"):
            if t in token_to_id:
                attrs[token_to_id[t]] = ATTR_USER_DEFINED
        for k in ("eos", "eot", "eom"):
            if ids[k] is not None:
                eog.add(ids[k])
        texts_in_eog = {tokens[i]: i for i in eog}
        has_return = "<|return|>" in texts_in_eog
        has_call = "<|call|>" in texts_in_eog or "<|calls|>" in texts_in_eog
        has_flush = "<|flush|>" in texts_in_eog
        if "<|end|>" in texts_in_eog and ((has_return and has_call) or (has_call and has_flush)):
            end_id = texts_in_eog["<|end|>"]
            eog.discard(end_id)
            attrs[end_id] = ATTR_USER_DEFINED
        if "</s>" in texts_in_eog and ("<|tool_response>" in texts_in_eog
                                       or "<|plamo:eos|>" in texts_in_eog):
            s_id = texts_in_eog["</s>"]
            eog.discard(s_id)
            attrs[s_id] = ATTR_NORMAL

        # special-token cache, longest text first. llama.cpp uses (unstable) std::sort, so the
        # order among equal-length texts is unspecified there; here it is by id.
        special = [i for i in range(n) if attrs[i] & (ATTR_CONTROL | ATTR_USER_DEFINED
                                                      | ATTR_UNKNOWN)]
        special.sort(key=lambda i: -len(tokens[i].encode("utf-8")))
        self._special_cache = special
        index: dict[str, list[int]] = {}  # first two characters -> positions in the cache
        for pos, tid in enumerate(special):
            index.setdefault(tokens[tid][:2], []).append(pos)
        self._special_index = index

        self.special_ids = ids
        self.bos_id = ids["bos"]
        self.eos_id = ids["eos"]
        self.eog_ids = frozenset(eog)
        if self.add_bos and self.bos_id is None:
            raise ModelLoadError(f"{src}: tokenizer.ggml.add_bos_token is true but the vocabulary "
                                 "has no BOS token (expected tokenizer.ggml.bos_token_id)")
        if self.add_eos and self.eos_id is None:
            raise ModelLoadError(f"{src}: tokenizer.ggml.add_eos_token is true but the vocabulary "
                                 "has no EOS token (expected tokenizer.ggml.eos_token_id)")

        self._pieces = [self._make_piece(i) for i in range(n)]

        # per-token strip attributes set by model name (after the piece cache, as in llama.cpp)
        model_name = str(md.get("general.name") or "").lower()
        pre_name = str(md.get("tokenizer.ggml.pre") or "")
        arch = str(md.get("general.architecture") or "")
        if (any(s in pre_name for s in ("jina-v2-de", "jina-v2-es", "jina-v2-code"))
                or any(s in arch for s in ("nomic-bert-moe", "jina-bert-v3"))):
            if "<mask>" in token_to_id:
                attrs[token_to_id["<mask>"]] |= ATTR_LSTRIP
        elif "phi-3" in model_name or "phi3" in model_name:
            for i in special:
                attrs[i] |= ATTR_RSTRIP
            if "</s>" in token_to_id:
                attrs[token_to_id["</s>"]] |= ATTR_RSTRIP
            for t in ("<unk>", "<s>", "<|endoftext|>"):
                if t in token_to_id:
                    attrs[token_to_id[t]] &= ~ATTR_RSTRIP
        elif "modern-bert" in model_name:
            if "[MASK]" in token_to_id:
                attrs[token_to_id["[MASK]"]] |= ATTR_LSTRIP

        if model == "llama":
            self._hf, self._spm_extra = _build_spm_merger(tokens, self.scores, token_to_id)
            self._byte_ids = [token_to_id.get(f"<0x{b:02X}>", token_to_id.get(chr(b)))
                              for b in range(256)]
        else:
            merges = md.get("tokenizer.ggml.merges")
            if not isinstance(merges, list) or not merges:
                raise ModelLoadError(f"{src}: metadata key 'tokenizer.ggml.merges' is missing "
                                     f"(expected the BPE merge list for a {model} tokenizer)")
            self._hf = _build_bpe_merger(src, token_to_id, merges, regexes, ignore_merges,
                                         raw_utf8=model == "gemma4")
            self._token_to_id = token_to_id
        return self

    # ------------------------------------------------------------------ encode

    def encode(self, text: str, add_special: bool = True, parse_special: bool = False) -> list[int]:
        """Token ids for `text`, as `llama_tokenize(vocab, text, add_special, parse_special)`.

        `add_special` adds BOS (and EOS) where the vocabulary asks for them; `parse_special`
        lets control tokens written in the text (e.g. ``<start_of_turn>``) become their ids.
        User-defined tokens are always matched.
        """
        if self.model == "none":
            raise ModelLoadError(f"{self.source}: tokenizer.ggml.model='none' has no vocabulary "
                                 "to encode text with (expected a llama, gpt2 or gemma4 "
                                 "tokenizer)")
        out: list[int] = []
        frags = self._partition(text, parse_special) if text else []
        if self.model == "llama":
            is_prev_special = True
            if add_special and self.add_bos:
                out.append(self.bos_id)
            for f in frags:
                if isinstance(f, str):
                    if self.add_space_prefix and is_prev_special:
                        f = " " + f
                    ids = self._hf.encode(f.replace(" ", SPACE_MARK),
                                          add_special_tokens=False).ids
                    n = self.vocab_size
                    if any(i >= n for i in ids):
                        ids = self._spm_expand_extra(ids)
                    out.extend(ids)
                    is_prev_special = False
                else:
                    out.append(f)
                    is_prev_special = True
            if add_special and self.add_eos:
                out.append(self.eos_id)
        else:
            if add_special and self.add_bos:
                out.append(self.bos_id)
            for f in frags:
                if isinstance(f, str) and self.model == "gemma4":
                    out.extend(self._gemma4_encode(f))
                elif isinstance(f, str):
                    ids = self._hf.encode(f, add_special_tokens=False).ids
                    n = self.vocab_size
                    out.extend(i for i in ids if i < n)  # drop the not-a-token sentinel
                else:
                    out.append(f)
            if add_special and self.add_eos:
                out.append(self.eos_id)
        return out

    def _gemma4_encode(self, text: str) -> list[int]:
        """llm_tokenizer_bpe_session::tokenize with LLAMA_VOCAB_PRE_TYPE_GEMMA4: spaces escaped,
        split into newline runs and the rest (regex ``[^\\n]+|[\\n]+``), a newline run that is
        a token taken whole, merges on raw UTF-8, byte tokens for what stays outside."""
        out: list[int] = []
        n = self.vocab_size
        for m in _GEMMA4_SPLIT.finditer(text.replace(" ", SPACE_MARK)):
            word = m.group(0)
            if word[0] == "\n":
                tid = self._token_to_id.get(word)
                if tid is not None:
                    out.append(tid)
                    continue
            out.extend(i for i in self._hf.encode(word, add_special_tokens=False).ids if i < n)
        return out

    def _spm_expand_extra(self, ids: list[int]) -> list[int]:
        """Characters that stayed unmerged outside the vocabulary -> their byte tokens."""
        out: list[int] = []
        for i in ids:
            if i < self.vocab_size:
                out.append(i)
                continue
            for b in self._spm_extra[i].encode("utf-8"):
                bid = self._byte_ids[b]
                if bid is None:
                    raise ModelLoadError(f"{self.source}: no byte token <0x{b:02X}> for a "
                                         "character outside the vocabulary (expected the "
                                         "256 byte-fallback tokens)")
                out.append(bid)
        return out

    def _partition(self, text: str, parse_special: bool) -> list[str | int]:
        """tokenizer_st_partition: split out special-token texts, longest token first.

        Fragments are raw strings or token ids. (Matching on str equals llama.cpp's byte-wise
        search: a valid UTF-8 needle only matches at character boundaries.)
        """
        toks, attrs = self.tokens, self.attrs
        cache, index = self._special_cache, self._special_index
        # only tokens whose first two characters occur somewhere can match; keep cache order
        keys = set(text)
        keys.update(text[i:i + 2] for i in range(len(text) - 1))
        positions = sorted(p for k in keys.intersection(index) for p in index[k])
        frags: list[str | int] = [text]
        for p in positions:
            tid = cache[p]
            a = attrs[tid]
            if not parse_special and a & (ATTR_CONTROL | ATTR_UNKNOWN):
                continue
            tt = toks[tid]
            if tt not in text:  # cheap filter: absent from the whole text -> from every fragment
                continue
            new: list[str | int] = []
            for f in frags:
                if not isinstance(f, str) or tt not in f:
                    new.append(f)
                    continue
                pos = 0
                while True:
                    m = f.find(tt, pos)
                    if m < 0:
                        rest = f[pos:]
                        if rest:
                            new.append(rest)
                        break
                    left = f[pos:m]
                    if a & ATTR_LSTRIP:
                        left = left.rstrip(_C_ISSPACE)
                    if left:
                        new.append(left)
                    new.append(tid)
                    pos = m + len(tt)
                    if a & ATTR_RSTRIP:
                        while pos < len(f) and f[pos] in _C_ISSPACE:
                            pos += 1
            frags = new
        return frags

    # ------------------------------------------------------------------ decode

    def _make_piece(self, tid: int) -> bytes:
        """token_to_piece(special=True) as cached by llama.cpp at load time."""
        a = self.attrs[tid]
        text = self.tokens[tid]
        if a & (ATTR_UNKNOWN | ATTR_CONTROL | ATTR_USER_DEFINED):
            return text.encode("utf-8")
        if a & ATTR_NORMAL:
            if self.model in ("llama", "gemma4"):
                return text.replace(SPACE_MARK, " ").encode("utf-8")
            return _gpt2_decode_text(text)
        if a & ATTR_BYTE:
            return bytes([int(text[3:5], 16)])
        return b""

    def _check_id(self, tid: int) -> None:
        if not 0 <= tid < self.vocab_size:
            raise ValueError(f"token id {tid} is out of range (vocabulary size {self.vocab_size})")

    def piece_bytes(self, token_id: int, special: bool = True) -> bytes:
        """One token's bytes, as llama_token_to_piece(vocab, id, lstrip=0, special)."""
        tid = int(token_id)
        self._check_id(tid)
        if self.model == "none":
            return f"<tok:{tid}>".encode()
        if not special and self.attrs[tid] & (ATTR_UNKNOWN | ATTR_CONTROL):
            return b""
        return self._pieces[tid]

    def piece(self, token_id: int) -> str:
        """One token's text as llama.cpp's token_to_piece gives it, special tokens included.

        A lone byte token that is not valid UTF-8 on its own decodes to U+FFFD; use
        `piece_bytes` to stream bytes.
        """
        return self.piece_bytes(token_id).decode("utf-8", errors="replace")

    def decode_bytes(self, ids: Sequence[int], skip_special: bool = False) -> bytes:
        """llama_detokenize(vocab, ids, remove_special=skip_special,
        unparse_special=not skip_special) as bytes."""
        ids = [int(i) for i in ids]
        for i in ids:
            self._check_id(i)
        if self.model == "none":
            return "".join(f"<tok:{i}>" for i in ids).encode()
        remove_special = skip_special
        unparse_special = not skip_special
        remove_space = self.add_space_prefix
        if remove_special and self.add_bos and ids and ids[0] == self.bos_id:
            remove_space = False
            ids = ids[1:]
        if remove_special and self.add_eos and ids and ids[-1] == self.eos_id:
            ids = ids[:-1]
        parts: list[bytes] = []
        for i in ids:
            p = self.piece_bytes(i, special=unparse_special)
            if remove_space and p.startswith(b" "):
                p = p[1:]
            remove_space = False
            parts.append(p)
        text = b"".join(parts)
        if self.clean_spaces and text:
            text = _clean_spaces(text)
        return text

    def decode(self, ids: Sequence[int], skip_special: bool = False) -> str:
        """Text for `ids`, as llama.cpp's `llama_detokenize` gives it.

        `skip_special=False` renders control tokens as their text (``unparse_special=True``);
        `skip_special=True` drops them and a leading BOS / trailing EOS (``remove_special=True``).
        Invalid UTF-8 (e.g. a cut multi-byte character) becomes U+FFFD.
        """
        return self.decode_bytes(ids, skip_special).decode("utf-8", errors="replace")

    # ------------------------------------------------------------------ misc

    def is_eog(self, token_id: int) -> bool:
        return int(token_id) in self.eog_ids

    def token_text(self, token_id: int) -> str:
        """The raw vocabulary string of a token (``▁`` / byte-level characters kept)."""
        tid = int(token_id)
        self._check_id(tid)
        if self.model == "none":
            return f"<tok:{tid}>"
        return self.tokens[tid]

    def __repr__(self) -> str:
        return (f"Tokenizer(model={self.model!r}, vocab_size={self.vocab_size}, "
                f"bos_id={self.bos_id}, eos_id={self.eos_id}, add_bos={self.add_bos})")


# ---------------------------------------------------------------------- helpers


def _none_vocab_size(gguf_file) -> int:
    md = gguf_file.metadata
    arch = md.get("general.architecture")
    if arch is not None and isinstance(md.get(f"{arch}.vocab_size"), int):
        return int(md[f"{arch}.vocab_size"])
    toks = md.get("tokenizer.ggml.tokens")
    if isinstance(toks, list) and toks:
        return len(toks)
    tensors = getattr(gguf_file, "tensors", {}) or {}
    if "token_embd.weight" in tensors:
        return int(tensors["token_embd.weight"].shape[0])
    return 0


def _gpt2_decode_text(text: str) -> bytes:
    """llama_decode_text: byte-level characters back to bytes."""
    out = bytearray()
    for ch in text:
        b = _BYTE_DEC.get(ch)
        if b is not None:
            out.append(b)
        else:
            u = ch.encode("utf-8")
            out += b"[UNK_BYTE_0x" + u.hex().encode() + text.encode("utf-8") + b"]"
    return bytes(out)


def _clean_spaces(text: bytes) -> bytes:
    """The three clean-up passes of llama_vocab::impl::detokenize (clean_spaces)."""
    t = bytearray(text)
    # pass 1: " ?", " !", " .", " ,"
    out = bytearray(t[:1])
    for i in range(1, len(t)):
        x = t[i]
        if t[i - 1] == 0x20 and x in b"?!.,":
            out.pop()
        out.append(x)
    t = out
    # pass 2: " ' " -> "'" (the space after is skipped and zeroed, as llama.cpp does in place)
    out = bytearray(t[:1])
    n = len(t)
    i = 1
    while i < n:
        x = t[i]
        if x == 0x27 and i + 1 < n and t[i - 1] == 0x20 and t[i + 1] == 0x20:
            out.pop()
            out.append(x)
            t[i + 1] = 0
            i += 2
            continue
        out.append(x)
        i += 1
    t = out
    # pass 3: " 's", " 'm", " 're", " 've"
    out = bytearray(t[:1])
    n = len(t)
    for i in range(1, n):
        x = t[i]
        if t[i - 1] == 0x20 and x == 0x27 and i + 1 < n:
            x1 = t[i + 1]
            if x1 in b"sm":
                out.pop()
            elif x1 not in b"td" and i + 2 < n:
                x2 = t[i + 2]
                if (x1, x2) in ((0x72, 0x65), (0x76, 0x65)):
                    out.pop()
        out.append(x)
    return bytes(out)


def _build_spm_merger(tokens: list[str], scores: list[float], token_to_id: dict[str, int]):
    """A `tokenizers` BPE reproducing llama.cpp's SPM merge loop; returns (tokenizer, extra).

    llama.cpp merges any two adjacent symbols whose concatenation is in the vocabulary, best
    score first; so every split (a, b) of a token with both halves in the vocabulary is a merge,
    ranked by the token's score (then by id and split position: ties between different tokens
    of equal score are the one thing a rank list cannot express, see the module notes).

    A single character that is not a token but occurs inside tokens can still take part in
    llama.cpp's merges, so such characters get extra ids past the vocabulary (`extra`, id ->
    character); where one survives unmerged it is replaced by its byte tokens afterwards.
    """
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models

    n_vocab = len(tokens)
    vocab = dict(token_to_id)
    extra: dict[int, str] = {}
    for t in tokens:
        for ch in t:
            if ch not in vocab:
                vocab[ch] = n_vocab + len(extra)
                extra[vocab[ch]] = ch
    cand: list[tuple[float, int, int, str, str]] = []
    has = vocab.__contains__
    for i, t in enumerate(tokens):
        n = len(t)
        if n < 2:
            continue
        s = scores[i]
        for k in range(1, n):
            a = t[:k]
            if has(a):
                b = t[k:]
                if has(b):
                    cand.append((-s, i, k, a, b))
    cand.sort()
    merges = [(a, b) for _, _, _, a, b in cand]
    bpe = models.BPE(vocab=vocab, merges=merges, byte_fallback=True, fuse_unk=False,
                     cache_capacity=0)
    return HFTokenizer(bpe), extra


def _build_bpe_merger(src: str, token_to_id: dict[str, int], merges_raw: list[str],
                      regexes: list[str], ignore_merges: bool, raw_utf8: bool = False):
    """The merge loop as a `tokenizers` BPE. `raw_utf8` (Gemma 4): merges run on the text's own
    characters, an unmerged character outside the vocabulary falls back to its ``<0xXX>`` byte
    tokens, and splitting is done by the caller; otherwise (gpt2) the text is split by
    `regexes` and byte-level encoded first."""
    from tokenizers import Regex
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers

    n_vocab = len(token_to_id)
    merges: list[tuple[str, str]] = []
    seen: set[tuple[str, str]] = set()
    for idx, m in enumerate(merges_raw):
        pos = m.find(" ", 1)
        if pos < 0:
            a, b = "", ""
        else:
            a, b = m[:pos], m[pos + 1:]
        if (a, b) in seen:  # llama.cpp's map keeps the first rank
            continue
        seen.add((a, b))
        if a not in token_to_id or b not in token_to_id or a + b not in token_to_id:
            raise ModelLoadError(
                f"{src}: tokenizer.ggml.merges[{idx}]={m!r} joins strings that are not all in "
                "tokenizer.ggml.tokens (expected both parts and their concatenation to be tokens)")
        merges.append((a, b))
    # A character missing from the vocabulary stays a symbol of its own in llama.cpp (nothing
    # merges across it) and is dropped at the end; an unknown-token sentinel past the vocabulary
    # keeps it in place during the merges, and encode() drops it afterwards.
    vocab = dict(token_to_id)
    if _UNK_SENTINEL in vocab:
        raise ModelLoadError(f"{src}: tokenizer.ggml.tokens contains the reserved string "
                             f"{_UNK_SENTINEL!r}")
    vocab[_UNK_SENTINEL] = n_vocab
    bpe = models.BPE(vocab=vocab, merges=merges, byte_fallback=raw_utf8,
                     unk_token=_UNK_SENTINEL, ignore_merges=ignore_merges, fuse_unk=False)
    tok = HFTokenizer(bpe)
    if raw_utf8:
        return tok
    splits = [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in regexes]
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        splits + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    return tok
